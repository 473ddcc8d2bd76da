// A pool that belongs to this client: created with an owner TTL, kept alive
// in the background by the same keepalive as a lease (`Keeper`), deleted by
// `delete()` / `await using`, and by the server when the keepalives stop.

import { create } from "@bufbuild/protobuf";
import type { CallOptions, Client as ConnectClient } from "@connectrpc/connect";

import { PoolSchema, PoolService, type Pool as PbPool } from "./gen/sandpool/v1/pool_pb.js";
import { LeaseState } from "./gen/sandpool/v1/session_pb.js";
import { Code, PoolLost, SandpoolError, mapError, mapPoolError } from "./errors.js";
import { Keeper, answerReason, type KeepAliveInit, type KeepAliveTarget } from "./keepalive.js";
import { poolFromPb, statsFromPb, type PoolInfo, type PoolStats } from "./pools.js";
import { Session, acquireRequest, grantedFrom, type AcquireOptions, type SessionContext } from "./session.js";
import { streamCall } from "./streams.js";

/** What an OwnedPool needs of its client. */
export interface OwnedPoolContext extends SessionContext {
  pools: ConnectClient<typeof PoolService>;
}

const POOL_STATE_REASONS: Partial<Record<LeaseState, string>> = {
  [LeaseState.NOT_FOUND]:
    "the server has no such pool owned by this caller (deleted, or lapsed: no keepalive arrived within its owner TTL)",
};

/** An owned pool, as its keepalive renews it. */
class OwnedPoolTarget implements KeepAliveTarget<PoolLost> {
  readonly request: KeepAliveInit;

  constructor(
    private readonly ctx: OwnedPoolContext,
    private readonly name: string,
  ) {
    this.request = { pool: name };
  }

  expired(ttlMs: number): PoolLost {
    return new PoolLost(
      this.name,
      `keepalive failed for longer than the ${ttlMs / 1000}s owner TTL: the server deletes the pool by itself`,
      Code.Unavailable,
    );
  }

  answered(state: LeaseState): PoolLost {
    return new PoolLost(this.name, answerReason(state, POOL_STATE_REASONS), Code.NotFound, { state });
  }

  gone(err: unknown): PoolLost | undefined {
    const mapped = mapPoolError(err, this.name);
    return mapped instanceof PoolLost ? mapped : undefined;
  }

  abandon(): Promise<unknown> {
    return this.ctx.pools.deletePool({ name: this.name }, { timeoutMs: this.ctx.timeoutMs });
  }
}

/** A fresh error for a loss thrown again. */
function copyOf(lost: PoolLost): PoolLost {
  return new PoolLost(lost.pool, lost.reason, lost.code, { details: lost.details, state: lost.state });
}

/**
 * A pool that belongs to this client, made by `SandpoolClient.createOwnedPool`:
 * kept alive in the background at a third of its owner TTL, deleted by
 * `delete()` (or `await using`), and by the server within the owner TTL
 * when this process dies or stops renewing. Once the pool is lost (`lost`
 * says why), every call rejects with PoolLost.
 */
export class OwnedPool implements AsyncDisposable {
  readonly name: string;
  #pool: PbPool = create(PoolSchema);
  /** Aborted when the keepalive gives up on the pool: the calls in flight end with PoolLost. */
  readonly #cut = new AbortController();
  readonly #keeper: Keeper<PoolLost>;
  #deleting: Promise<{ busyRemaining: number }> | undefined;

  /**
   * @internal Use `SandpoolClient.createOwnedPool`. `startedAt`
   * (performance.now()) is when CreatePool was called.
   */
  constructor(
    private readonly ctx: OwnedPoolContext,
    name: string,
    ownerTtlMs: number,
    startedAt: number,
  ) {
    this.name = name;
    this.#keeper = new Keeper(ctx.sessions, new OwnedPoolTarget(ctx, name), ownerTtlMs, startedAt, {
      exists: false,
      onGiveUp: () => this.#cut.abort(),
    });
  }

  /** @internal CreatePool answered with `pool`. */
  created(pool: PbPool): void {
    this.#pool = pool;
    this.#keeper.exists();
  }

  /** @internal CreatePool failed: the keepalive ends. */
  async abandoned(): Promise<void> {
    await this.#keeper.end();
  }

  /** The pool (the generated message) as CreatePool, or the last `get()`, answered. */
  get pool(): PbPool {
    return this.#pool;
  }

  /** The pool in plain form, as CreatePool, or the last `get()`, answered. */
  get info(): PoolInfo {
    return poolFromPb(this.#pool);
  }

  /** Without a keepalive for this long, the server deletes the pool. */
  get ownerTtlMs(): number {
    return this.#keeper.ttlMs;
  }

  /** Keepalives the server confirmed so far. */
  get renewals(): number {
    return this.#keeper.renewals;
  }

  /** Why the pool is lost (or that this client deleted it); undefined while it is held. */
  get lost(): string | undefined {
    return this.#loss()?.reason;
  }

  /** True once `delete()` was called. */
  get closed(): boolean {
    return this.#deleting !== undefined;
  }

  #loss(): PoolLost | undefined {
    if (this.#deleting !== undefined) {
      return new PoolLost(this.name, "the pool was deleted by this client", Code.FailedPrecondition);
    }
    return this.#keeper.loss();
  }

  /** Throws PoolLost once the pool is lost or deleted. */
  check(): void {
    const lost = this.#loss();
    if (lost !== undefined) {
      throw copyOf(lost);
    }
  }

  /** Maps a call's error; one saying the pool is gone marks it lost. A call cut by the keepalive rejects with the loss. */
  #fail(err: unknown): SandpoolError {
    const mapped = mapPoolError(err, this.name);
    const lost = this.#keeper.loss();
    if (this.#cut.signal.aborted && mapped.code === Code.Canceled && lost !== undefined) {
      return copyOf(lost);
    }
    if (mapped instanceof PoolLost) {
      this.#keeper.markLost(mapped);
    }
    return mapped;
  }

  /** A call about the pool: checked first, cut when the keepalive gives up, its error mapped. */
  async #call<T>(invoke: (options: CallOptions) => Promise<T>, timeoutMs: number, signal?: AbortSignal): Promise<T> {
    this.check();
    const call = streamCall(timeoutMs, [signal, this.#cut.signal]);
    try {
      return await invoke(call.options);
    } catch (err) {
      throw this.#fail(err);
    } finally {
      call.dispose();
    }
  }

  /** Leases a warm container of this pool, as `SandpoolClient.acquire` does; PoolLost once the pool is lost. */
  async acquire(options: AcquireOptions = {}): Promise<Session> {
    // The lease's TTL counts from its grant, no earlier than the call plus
    // the server's wait for a container: the session's clock is on the safe side.
    const sentAt = performance.now();
    const r = await this.#call(
      (call) => this.ctx.sessions.acquire(acquireRequest(this.name, options), call),
      options.waitMs ?? this.ctx.timeoutMs,
      options.signal,
    );
    if (r.lease === undefined) {
      throw new SandpoolError(Code.Internal, "Acquire answered without a lease");
    }
    const ctx = { sessions: this.ctx.sessions, artifacts: this.ctx.artifacts, timeoutMs: this.ctx.timeoutMs };
    return new Session(ctx, r.lease, { keepAlive: options.keepAlive ?? true, startedAt: grantedFrom(sentAt, r) });
  }

  /** The pool now (phase, stats, ownerExpireTime); also kept as `pool` and `info`. */
  async get(): Promise<PoolInfo> {
    const r = await this.#call((call) => this.ctx.pools.getPool({ name: this.name }, call), this.ctx.timeoutMs);
    this.#pool = r.pool ?? this.#pool;
    return poolFromPb(r.pool);
  }

  /** The pool's statistics. */
  async stats(): Promise<PoolStats> {
    const r = await this.#call((call) => this.ctx.pools.getPoolStats({ name: this.name }, call), this.ctx.timeoutMs);
    return statsFromPb(r.stats);
  }

  /**
   * Deletes the pool now and stops its keepalive (idempotent: later calls
   * get the first one's answer); resolves with the containers still busy.
   * With `wait`, once every container is removed. Without, the call waits
   * at most the owner TTL (or the client's timeout, if shorter): past it
   * the server deletes the pool by itself. A lost pool is gone already:
   * nothing is sent.
   */
  delete(options: { wait?: boolean; timeoutMs?: number } = {}): Promise<{ busyRemaining: number }> {
    this.#deleting ??= this.#delete(options);
    return this.#deleting;
  }

  /** Same as `delete()`. */
  close(): Promise<{ busyRemaining: number }> {
    return this.delete();
  }

  async #delete(options: { wait?: boolean; timeoutMs?: number }): Promise<{ busyRemaining: number }> {
    const lost = this.#keeper.loss();
    await this.#keeper.end();
    if (lost !== undefined) {
      return { busyRemaining: 0 };
    }
    const wait = options.wait ?? false;
    const timeoutMs =
      options.timeoutMs ??
      (wait ? Math.max(this.ctx.timeoutMs, 60_000) : Math.min(this.ctx.timeoutMs, Math.max(this.ownerTtlMs, 1000)));
    try {
      const r = await this.ctx.pools.deletePool({ name: this.name, wait }, { timeoutMs });
      return { busyRemaining: r.busyRemaining };
    } catch (err) {
      const mapped = mapError(err);
      if (mapped.code === Code.NotFound) {
        return { busyRemaining: 0 };
      }
      throw mapped;
    }
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.delete();
  }
}
