// The client: one HTTP/2 gRPC transport, a bearer-token interceptor, a
// deadline on every call, and one accessor per service.

import type { ClientSessionOptions, SecureClientSessionOptions } from "node:http2";

import { durationFromMs } from "@bufbuild/protobuf/wkt";
import { createClient, type Client as ConnectClient, type Interceptor, type Transport } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";

import { ArtifactService } from "./gen/sandpool/v1/artifact_pb.js";
import { PoolService } from "./gen/sandpool/v1/pool_pb.js";
import { SessionService } from "./gen/sandpool/v1/session_pb.js";
import { Code, InvalidArgument, SandpoolError, mapError, mapped } from "./errors.js";
import { poolFromPb, poolSpecToPb, statsFromPb, type PoolInfo, type PoolSpecInput, type PoolStats } from "./pools.js";
import { OwnedPool } from "./owned.js";
import { Session, acquireRequest, grantedFrom, type AcquireOptions } from "./session.js";
import { drive } from "./streams.js";
import { traceContext } from "./tracing.js";

export type { AcquireOptions } from "./session.js";

/** The address used when neither the option nor SANDPOOL_ADDR is set. */
export const DEFAULT_ADDRESS = "127.0.0.1:50051";
/** Default deadline of unary calls. */
export const DEFAULT_TIMEOUT_MS = 30_000;

/** TLS settings: `true` for the system's roots, or explicit PEM material (mTLS with cert + key). */
export type TlsOptions =
  | boolean
  | {
      /** CA certificate(s) to trust, PEM. */
      ca?: string | Buffer;
      /** Client certificate for mTLS, PEM. */
      cert?: string | Buffer;
      /** Client key for mTLS, PEM. */
      key?: string | Buffer;
      /** Name to check the server's certificate against. */
      servername?: string;
    };

export interface ClientOptions {
  /**
   * host:port or a URL (http://, https://). Default: $SANDPOOL_ADDR, else
   * 127.0.0.1:50051.
   */
  address?: string;
  /** Sent as `authorization: Bearer <token>` on every call. Default: $SANDPOOL_TOKEN. */
  token?: string;
  /** Connect over TLS. Default: off, unless the address starts with https://. */
  tls?: TlsOptions;
  /** Deadline of every unary call (and the default wait of acquire). Default 30 s. */
  timeoutMs?: number;
  /** Extra interceptors, run after the token one. */
  interceptors?: Interceptor[];
  /**
   * W3C trace context sent on every call, so the server's spans join this
   * trace. Default: the active OpenTelemetry context, when `@opentelemetry/api`
   * is installed (an optional peer dependency) and a span is active.
   */
  traceparent?: string;
  /** W3C tracestate sent with an explicit `traceparent`. */
  tracestate?: string;
}

/** The owner TTL of `createOwnedPool` when none is given. */
export const DEFAULT_OWNER_TTL_MS = 30_000;

export interface OwnedPoolOptions {
  /** Without a keepalive for this long, the server deletes the pool. Default 30 s. */
  ownerTtlMs?: number;
  /** Answer once min_pool_size containers are warm (or warming failed). */
  waitReady?: boolean;
  /** Deadline of the CreatePool call; default the client's timeoutMs. */
  timeoutMs?: number;
}

export interface WatchOptions {
  signal?: AbortSignal;
  /** Deadline of the whole watch; default none (it ends when the pool is deleted or on abort). */
  timeoutMs?: number;
}

function baseUrl(address: string, tls: boolean): string {
  if (tls && address.startsWith("http://")) {
    // Asking for TLS and naming a plaintext URL is a contradiction; never
    // fall back to plaintext quietly.
    throw new InvalidArgument(
      Code.InvalidArgument,
      `tls is set but the address ${address} says http://; use https:// or host:port`,
    );
  }
  if (/^https?:\/\//.test(address)) {
    return address;
  }
  return `${tls ? "https" : "http"}://${address}`;
}

/**
 * The entry point: pool admin calls and `acquire`, which returns a Session.
 * An idle client holds no timer or socket that keeps Node running.
 */
export class SandpoolClient {
  readonly address: string;
  readonly timeoutMs: number;
  readonly transport: Transport;
  /** The generated service clients, for calls this class does not wrap. */
  readonly pools: ConnectClient<typeof PoolService>;
  readonly sessions: ConnectClient<typeof SessionService>;
  readonly artifacts: ConnectClient<typeof ArtifactService>;

  constructor(options: ClientOptions = {}) {
    this.address = options.address ?? process.env["SANDPOOL_ADDR"] ?? DEFAULT_ADDRESS;
    this.timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    const token = options.token ?? process.env["SANDPOOL_TOKEN"];
    const tls = options.tls ?? false;
    const url = baseUrl(this.address, tls !== false);
    const interceptors: Interceptor[] = [];
    if (token !== undefined && token !== "") {
      interceptors.push((next) => (req) => {
        req.header.set("authorization", `Bearer ${token}`);
        return next(req);
      });
    }
    interceptors.push(traceContext(options.traceparent, options.tracestate));
    interceptors.push(...(options.interceptors ?? []));
    let nodeOptions: ClientSessionOptions | SecureClientSessionOptions | undefined;
    if (typeof tls === "object") {
      nodeOptions = { ca: tls.ca, cert: tls.cert, key: tls.key, servername: tls.servername };
    }
    this.transport = createGrpcTransport({
      baseUrl: url,
      interceptors,
      defaultTimeoutMs: this.timeoutMs,
      ...(nodeOptions === undefined ? {} : { nodeOptions }),
    });
    this.pools = createClient(PoolService, this.transport);
    this.sessions = createClient(SessionService, this.transport);
    this.artifacts = createClient(ArtifactService, this.transport);
  }

  // ------------------------------------------------------------ leases

  /**
   * Leases a warm container of `pool`. Under the pool's exhaustion strategy
   * the call may wait (PoolExhausted when the wait ends), fail at once
   * (PoolExhausted) or get a temporary container.
   */
  async acquire(pool: string, options: AcquireOptions = {}): Promise<Session> {
    // The lease's TTL counts from its grant, no earlier than the call plus
    // the server's wait for a container: the session's clock is on the safe side.
    const sentAt = performance.now();
    const r = await mapped(() =>
      this.sessions.acquire(acquireRequest(pool, options), {
        timeoutMs: options.waitMs ?? this.timeoutMs,
        signal: options.signal,
      }),
    );
    if (r.lease === undefined) {
      throw new SandpoolError(Code.Internal, "Acquire answered without a lease");
    }
    const ctx = { sessions: this.sessions, artifacts: this.artifacts, timeoutMs: this.timeoutMs };
    return new Session(ctx, r.lease, { keepAlive: options.keepAlive ?? true, startedAt: grantedFrom(sentAt, r) });
  }

  // ------------------------------------------------------------ pools

  /** Creates a pool; with `waitReady`, answers once min_pool_size containers are warm. */
  async createPool(spec: PoolSpecInput, options: { waitReady?: boolean; timeoutMs?: number } = {}): Promise<PoolInfo> {
    const r = await mapped(() =>
      this.pools.createPool(
        { spec: poolSpecToPb(spec), waitReady: options.waitReady ?? false },
        { timeoutMs: options.timeoutMs ?? this.timeoutMs },
      ),
    );
    return poolFromPb(r.pool);
  }

  /**
   * Creates a pool that belongs to this client: kept alive in the background
   * over the KeepAlive stream at a third of `ownerTtlMs` (default 30 s; at
   * least 1 s, at most the pool's maxLeaseTtl), as a lease is; deleted by
   * `delete()` or `await using`, and by the server within the owner TTL
   * when this process dies or stops renewing (its leases then end with
   * LeaseState.POOL_DELETED). A pool the keepalive loses (the server answers
   * that it has no such pool, or no renewal is confirmed within the TTL) is
   * reported by `lost`, and its calls reject with PoolLost.
   */
  async createOwnedPool(spec: PoolSpecInput, options: OwnedPoolOptions = {}): Promise<OwnedPool> {
    const ownerTtlMs = options.ownerTtlMs ?? DEFAULT_OWNER_TTL_MS;
    const ctx = { pools: this.pools, sessions: this.sessions, artifacts: this.artifacts, timeoutMs: this.timeoutMs };
    // The keepalive starts with the call: the server's clock for the pool
    // starts when it makes the pool, and a waitReady call may outlast the
    // owner TTL.
    const owned = new OwnedPool(ctx, spec.name, ownerTtlMs, performance.now());
    try {
      const r = await mapped(() =>
        this.pools.createPool(
          { spec: poolSpecToPb(spec), waitReady: options.waitReady ?? false, ownerTtl: durationFromMs(ownerTtlMs) },
          { timeoutMs: options.timeoutMs ?? this.timeoutMs },
        ),
      );
      if (r.pool === undefined) {
        throw new SandpoolError(Code.Internal, "CreatePool answered without a pool");
      }
      owned.created(r.pool);
      return owned;
    } catch (err) {
      // Nothing keeps a pool made half-way alive: the server deletes it
      // within the owner TTL.
      await owned.abandoned();
      throw err;
    }
  }

  async getPool(name: string): Promise<PoolInfo> {
    return poolFromPb((await mapped(() => this.pools.getPool({ name }, { timeoutMs: this.timeoutMs }))).pool);
  }

  /** Every pool, sorted by name. */
  async listPools(): Promise<PoolInfo[]> {
    return (await mapped(() => this.pools.listPools({}, { timeoutMs: this.timeoutMs }))).pools.map(poolFromPb);
  }

  /**
   * Drains a pool: no new leases; idle containers go now, busy ones when their
   * lease ends. With `wait`, answers once every container is removed.
   */
  async deletePool(name: string, options: { wait?: boolean; timeoutMs?: number } = {}): Promise<{ busyRemaining: number }> {
    const r = await mapped(() =>
      this.pools.deletePool({ name, wait: options.wait ?? false }, { timeoutMs: options.timeoutMs ?? this.timeoutMs }),
    );
    return { busyRemaining: r.busyRemaining };
  }

  /**
   * A pool's statistics. With several replicas behind the address, a config
   * pool's are summed over them; `replica` (its name, as lease ids carry it)
   * asks for that replica's own.
   */
  async getStats(name: string, options: { replica?: string } = {}): Promise<PoolStats> {
    const request = { name, replica: options.replica ?? "" };
    return statsFromPb((await mapped(() => this.pools.getPoolStats(request, { timeoutMs: this.timeoutMs }))).stats);
  }

  /**
   * The pool's statistics now and on every change (at most every 100 ms).
   * Ends after a final message with `closed` set when the pool is deleted;
   * breaking out of the loop ends the call.
   */
  async *watchStats(name: string, options: WatchOptions = {}): AsyncGenerator<PoolStats> {
    try {
      const stream = drive((call) => this.pools.watchPoolStats({ name }, call), options.timeoutMs, [options.signal]);
      for await (const m of stream) {
        yield statsFromPb(m.stats);
      }
    } catch (err) {
      throw mapError(err);
    }
  }
}
