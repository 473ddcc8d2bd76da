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
import { Session } from "./session.js";
import { drive } from "./streams.js";

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
}

export interface AcquireOptions {
  /** Lease TTL; default the pool's default_lease_ttl. At least 1 s. */
  ttlMs?: number;
  /**
   * How long the call may wait for a container (the call's deadline; the
   * server also stops at the pool's acquisition_timeout). Default: the
   * client's timeoutMs.
   */
  waitMs?: number;
  signal?: AbortSignal;
  /** Keep the lease alive in the background (default true). */
  keepAlive?: boolean;
  /** Environment variables for every run of the lease. */
  env?: Record<string, string>;
  /** Files placed in the container before the lease is handed out. */
  files?: { path: string; content: string | Uint8Array; mode?: number }[];
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
    // The lease's TTL counts from the call: the session's clock is on the safe side.
    const startedAt = performance.now();
    const r = await mapped(() =>
      this.sessions.acquire(
        {
          pool,
          ttl: options.ttlMs === undefined ? undefined : durationFromMs(options.ttlMs),
          env: options.env ?? {},
          files: (options.files ?? []).map((f) => ({
            path: f.path,
            content: typeof f.content === "string" ? new TextEncoder().encode(f.content) : f.content,
            mode: f.mode,
          })),
        },
        { timeoutMs: options.waitMs ?? this.timeoutMs, signal: options.signal },
      ),
    );
    if (r.lease === undefined) {
      throw new SandpoolError(Code.Internal, "Acquire answered without a lease");
    }
    const ctx = { sessions: this.sessions, artifacts: this.artifacts, timeoutMs: this.timeoutMs };
    return new Session(ctx, r.lease, { keepAlive: options.keepAlive ?? true, startedAt });
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

  async getStats(name: string): Promise<PoolStats> {
    return statsFromPb((await mapped(() => this.pools.getPoolStats({ name }, { timeoutMs: this.timeoutMs }))).stats);
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
