// The keepalive of a lease or of an owned pool: one loop for both, over the
// KeepAlive stream, at a third of the TTL (the contract shared with the
// Python and Rust clients: see `Keeper`).

import type { MessageInitShape } from "@bufbuild/protobuf";
import type { Client as ConnectClient } from "@connectrpc/connect";

import {
  LeaseState,
  SessionService,
  type KeepAliveRequestSchema,
  type KeepAliveResponse,
} from "./gen/sandpool/v1/session_pb.js";
import { Code, mapError, type SandpoolError } from "./errors.js";
import { durationToMs } from "./pools.js";
import { streamCall, type StreamCall } from "./streams.js";

/** Shortest keepalive period, whatever the TTL. */
const MIN_KEEPALIVE_MS = 100;
/** Pause before a renewal is tried again on a new stream after the last one broke. */
const KEEPALIVE_RETRY_MS = 500;
/** A keepalive stream is reopened at least this often (it has a deadline too). */
const KEEPALIVE_STREAM_DEADLINE_MS = 10 * 60 * 1000;

export type KeepAliveInit = MessageInitShape<typeof KeepAliveRequestSchema>;

/** A queue that a bidi or client stream reads its requests from. */
class RequestQueue<T> implements AsyncIterable<T> {
  private readonly items: T[] = [];
  private wake: (() => void) | undefined;
  private closed = false;

  push(item: T): void {
    if (this.closed) {
      return;
    }
    this.items.push(item);
    this.notify();
  }

  close(): void {
    this.closed = true;
    this.notify();
  }

  private notify(): void {
    const w = this.wake;
    this.wake = undefined;
    w?.();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<T> {
    for (;;) {
      const item = this.items.shift();
      if (item !== undefined) {
        yield item;
      } else if (this.closed) {
        return;
      } else {
        await new Promise<void>((resolve) => {
          this.wake = resolve;
        });
      }
    }
  }
}

/** Resolves after `ms`, or at once when `signal` aborts. Never holds the process open. */
function pause(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) {
      resolve();
      return;
    }
    const done = () => {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    timer.unref();
    signal.addEventListener("abort", done, { once: true });
  });
}

/** "the server answered the keepalive with STATE[: why]". */
export function answerReason(state: LeaseState, reasons: Partial<Record<LeaseState, string>>): string {
  const words = reasons[state];
  const reason = `the server answered the keepalive with ${LeaseState[state] ?? state}`;
  return words === undefined ? reason : `${reason}: ${words}`;
}

/**
 * What a keepalive renews (a lease, an owned pool), and the loss `L` it
 * reports once that is gone (LeaseLost, PoolLost).
 */
export interface KeepAliveTarget<L extends SandpoolError> {
  /** The request that renews it. */
  readonly request: KeepAliveInit;
  /** The loss when no renewal was confirmed within the TTL. */
  expired(ttlMs: number): L;
  /** The loss when a keepalive is answered with `state`. */
  answered(state: LeaseState): L;
  /** The loss when an error of the stream says the target is gone, else undefined. */
  gone(err: unknown): L | undefined;
  /** Tells the server, best effort, that this client gave the target up (Release, DeletePool). */
  abandon(): Promise<unknown>;
}

export interface KeeperOptions {
  /** Run the keepalive (default true); without it the clock never judges. */
  run?: boolean;
  /**
   * The target exists on the server (default true). An owned pool whose
   * CreatePool has not answered yet does not: a NOT_FOUND answer to a
   * renewal sent before `exists()` only means "not yet".
   */
  exists?: boolean;
  /** Called when no renewal was confirmed within the TTL (to cut the calls in flight). */
  onGiveUp?: () => void;
}

/**
 * The keepalive of one lease or owned pool, under the contract shared with
 * the Python and Rust clients:
 * - a renewal goes out a third of the TTL after the last confirmed one was
 *   sent (the first, a third of the TTL after Acquire or CreatePool was
 *   sent, plus the time Acquire's answer says it waited for a container),
 *   on one KeepAlive stream that is reopened when it breaks;
 * - an ACTIVE answer confirms the target until that renewal's send time
 *   plus the TTL the server answers;
 * - no wait (opening the stream, sending, the answer) outlasts that time:
 *   when it passes unconfirmed the target is lost ("keepalive failed for
 *   longer than the TTL"), the calls in flight reject with the loss, and the
 *   server is told with a best-effort Release or DeletePool;
 * - an answer in another state (EXPIRED, RELEASED, REVOKED, NOT_FOUND...),
 *   or an error saying the target is gone, loses it with that state; a
 *   NOT_FOUND answer to a renewal sent before the target was known to exist
 *   (an owned pool whose CreatePool has not answered yet) is tried again;
 * - the clock decides too: once the time has passed, `loss()` says so and
 *   every call rejects without a round trip, even before this loop runs.
 * Its timers are unref'd and every error is caught here.
 */
export class Keeper<L extends SandpoolError> {
  #lost: L | undefined;
  #ttlMs: number;
  /** Until when (performance.now()) the last confirmed renewal holds the target; Infinity when nobody judges. */
  #confirmedUntil: number;
  /** Since when the target is known to exist (Infinity: not yet). */
  #existsSince: number;
  #renewals = 0;
  /** Ends the loop (end, loss). */
  readonly #stop = new AbortController();
  /** The loop; it never rejects. */
  readonly #loop: Promise<void>;

  constructor(
    private readonly sessions: ConnectClient<typeof SessionService>,
    private readonly target: KeepAliveTarget<L>,
    ttlMs: number,
    startedAt: number,
    private readonly options: KeeperOptions = {},
  ) {
    this.#ttlMs = ttlMs;
    this.#existsSince = options.exists === false ? Infinity : -Infinity;
    if (options.run === false) {
      this.#confirmedUntil = Infinity;
      this.#loop = Promise.resolve();
    } else {
      this.#confirmedUntil = startedAt + ttlMs;
      this.#loop = this.keepAliveLoop(startedAt).catch(() => undefined);
    }
  }

  /** The TTL, as the server last answered it. */
  get ttlMs(): number {
    return this.#ttlMs;
  }

  /** Renewals the server confirmed so far. */
  get renewals(): number {
    return this.#renewals;
  }

  /** The loss, once the target is lost (by the clock, too). */
  loss(): L | undefined {
    if (this.#lost === undefined && performance.now() > this.#confirmedUntil) {
      this.#lost = this.target.expired(this.#ttlMs);
    }
    return this.#lost;
  }

  /** The target is gone (the first loss stays the reason); the loop ends. */
  markLost(lost: L): void {
    this.#lost ??= lost;
    this.#stop.abort();
  }

  /** The target is known to exist from now on (its CreatePool answered). */
  exists(): void {
    this.#existsSince = performance.now();
  }

  /**
   * Ends the keepalive because this client ended the target (released,
   * deleted): a loss before stays the reason, none comes after it.
   */
  async end(): Promise<void> {
    this.loss();
    this.#confirmedUntil = Infinity;
    this.#stop.abort();
    await this.#loop;
  }

  private async keepAliveLoop(startedAt: number): Promise<void> {
    const stop = this.#stop.signal;
    let period = Math.max(this.#ttlMs / 3, MIN_KEEPALIVE_MS);
    let nextAt = startedAt + period;
    let stream:
      | { call: StreamCall; requests: RequestQueue<KeepAliveInit>; responses: AsyncIterator<KeepAliveResponse> }
      | undefined;
    const close = () => {
      stream?.call.abort();
      stream?.call.dispose();
      stream?.requests.close();
      stream = undefined;
    };
    try {
      for (;;) {
        await pause(nextAt - performance.now(), stop);
        if (stop.aborted) {
          return;
        }
        const left = this.#confirmedUntil - performance.now();
        if (left <= 0) {
          break;
        }
        const sent = performance.now();
        nextAt = sent + KEEPALIVE_RETRY_MS;
        try {
          if (stream === undefined) {
            // Ends with `stop` (end, loss) or at its deadline (then reopened).
            const call = streamCall(Math.max(KEEPALIVE_STREAM_DEADLINE_MS, 10 * this.#ttlMs), [stop]);
            const requests = new RequestQueue<KeepAliveInit>();
            const responses = this.sessions.keepAlive(requests, call.options)[Symbol.asyncIterator]();
            stream = { call, requests, responses };
          }
          stream.requests.push(this.target.request);
          const next = stream.responses.next();
          // Settled later when the call is aborted: never unhandled.
          next.catch(() => undefined);
          const answer = await Promise.race([next, pause(left, stop).then(() => "timeout" as const)]);
          if (stop.aborted) {
            return;
          }
          if (answer === "timeout") {
            close();
            nextAt = sent + left; // the target's time is up: give up then
            continue;
          }
          if (answer.done === true) {
            close(); // the server ended the stream (say, it is stopping): reopen
            continue;
          }
          const r = answer.value;
          if (r.state === LeaseState.NOT_FOUND && sent < this.#existsSince) {
            // Not there yet (its CreatePool is on its way): a target made
            // after this answer lives at least a TTL.
            this.#confirmedUntil = Math.max(this.#confirmedUntil, sent + this.#ttlMs);
            continue;
          }
          if (r.state !== LeaseState.ACTIVE) {
            this.markLost(this.target.answered(r.state));
            return;
          }
          if (r.ttl !== undefined && durationToMs(r.ttl) > 0) {
            this.#ttlMs = durationToMs(r.ttl);
            period = Math.max(this.#ttlMs / 3, MIN_KEEPALIVE_MS);
          }
          this.#confirmedUntil = sent + this.#ttlMs;
          this.#renewals += 1;
          nextAt = sent + period;
        } catch (err) {
          close();
          if (stop.aborted) {
            return;
          }
          const lost = this.target.gone(err);
          if (lost !== undefined) {
            this.markLost(lost);
            return;
          }
          if (mapError(err).code === Code.DeadlineExceeded) {
            nextAt = sent; // the stream's own deadline ended it: reopen now
          }
        }
      }
      // No renewal was confirmed within the TTL.
      this.loss();
      this.options.onGiveUp?.();
      this.target.abandon().catch(() => undefined);
    } finally {
      close();
    }
  }
}
