// A lease held by this process: kept alive in the background over the
// KeepAlive stream at a third of its TTL (the keepalive contract shared with
// the Python and Rust clients: see `keepAliveLoop`), released by `release()`
// or `await using`. Once the lease is lost every call rejects with LeaseLost.

import { createReadStream, createWriteStream } from "node:fs";
import { pipeline } from "node:stream/promises";
import { Readable } from "node:stream";

import type { MessageInitShape } from "@bufbuild/protobuf";
import { durationFromMs, timestampDate } from "@bufbuild/protobuf/wkt";
import type { CallOptions, Client as ConnectClient } from "@connectrpc/connect";

import { ArtifactService, DownloadKind, type UploadRequestSchema } from "./gen/sandpool/v1/artifact_pb.js";
import {
  LeaseState,
  PlotFormat,
  SessionService,
  type KeepAliveRequestSchema,
  type KeepAliveResponse,
  type Lease as PbLease,
  type RunRequestSchema,
} from "./gen/sandpool/v1/session_pb.js";
import { Code, LeaseLost, SandpoolError, mapError, mapLeaseError } from "./errors.js";
import { durationToMs } from "./pools.js";
import { drive, streamCall, type StreamCall } from "./streams.js";
import {
  EventDecoder,
  artifactFromPb,
  collect,
  concat,
  type ArtifactMeta,
  type ContextRunOptions,
  type Program,
  type RunEvent,
  type RunOptions,
  type RunResult,
} from "./run.js";

/** Shortest keepalive period, whatever the TTL. */
const MIN_KEEPALIVE_MS = 100;
/** Pause before a renewal is tried again on a new stream after the last one broke. */
const KEEPALIVE_RETRY_MS = 500;
/** A keepalive stream is reopened at least this often (it has a deadline too). */
const KEEPALIVE_STREAM_DEADLINE_MS = 10 * 60 * 1000;
/** The TTL of a lease whose Acquire answer names none. */
const DEFAULT_TTL_MS = 30_000;
/** Added to a run's timeout for its call's deadline. */
const RUN_DEADLINE_SLACK_MS = 30_000;
/** Default run call deadline when no timeout is given: max_run_timeout's default plus slack. */
const RUN_DEFAULT_DEADLINE_MS = 3600_000 + RUN_DEADLINE_SLACK_MS;
/** Upload chunk size. */
const UPLOAD_CHUNK = 1 << 20;

/** What a Session needs of its client. */
export interface SessionContext {
  sessions: ConnectClient<typeof SessionService>;
  artifacts: ConnectClient<typeof ArtifactService>;
  /** Default deadline of unary calls. */
  timeoutMs: number;
}

/** The lease a session holds. */
export interface LeaseInfo {
  /** 128-bit random id: the capability to use the container. */
  id: string;
  pool: string;
  containerId: string;
  ttlMs: number;
  expireTime: Date | undefined;
  /** A temporary container (TEMPORARY strategy), destroyed on release. */
  temporary: boolean;
  language: string;
}

export interface UploadOptions {
  /** File mode; default 0o644. */
  mode?: number;
  /** The data is a tar archive to unpack into the directory `path`. */
  tar?: boolean;
  /** Call deadline; default the client's timeoutMs. */
  timeoutMs?: number;
}

export interface UploadResult {
  path: string;
  size: number;
  /** Hex SHA-256 of the bytes the server received. */
  sha256: string;
}

export interface Download {
  path: string;
  /** A regular file's bytes, or a tar archive of a directory's contents. */
  kind: "file" | "tar";
  mode: number;
  /** Size of a file (0 for a directory). */
  size: number;
  data: Uint8Array;
}

/** What `upload` accepts: bytes, text (UTF-8), or a stream of chunks. */
export type UploadSource = Uint8Array | string | Iterable<Uint8Array> | AsyncIterable<Uint8Array>;

type KeepAliveInit = MessageInitShape<typeof KeepAliveRequestSchema>;
type UploadInit = MessageInitShape<typeof UploadRequestSchema>;

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

const STATE_REASONS: Partial<Record<LeaseState, string>> = {
  [LeaseState.EXPIRED]: "the lease expired on the server (no keepalive arrived within its TTL)",
  [LeaseState.RELEASED]: "the lease was released",
  [LeaseState.REVOKED]: "the server revoked the lease (its pool was deleted or the server is stopping)",
  [LeaseState.NOT_FOUND]: "the server does not know the lease",
  [LeaseState.CONTAINER_LOST]: "the lease's container died or was removed outside sandpool (acquire a new one)",
  [LeaseState.POOL_DELETED]: "the lease's pool was deleted because its owner stopped keeping it alive",
  [LeaseState.LIFETIME_EXCEEDED]: "the lease reached its pool's max_lease_lifetime (acquire a new one)",
};

/** Why a lease is lost, by the state a keepalive answer gives. */
function stateReason(state: LeaseState): string {
  const words = STATE_REASONS[state];
  const reason = `the server answered the keepalive with ${LeaseState[state] ?? state}`;
  return words === undefined ? reason : `${reason}: ${words}`;
}

/** A fresh error for a loss thrown again. */
function copyOf(lost: LeaseLost): LeaseLost {
  return new LeaseLost(lost.leaseId, lost.reason, lost.code, { details: lost.details, state: lost.state });
}

const PLOT_FORMATS = { png: PlotFormat.PNG, svg: PlotFormat.SVG, pdf: PlotFormat.PDF } as const;

export function leaseFromPb(l: PbLease): LeaseInfo {
  return {
    id: l.id,
    pool: l.pool,
    containerId: l.containerId,
    ttlMs: durationToMs(l.ttl),
    expireTime: l.expireTime === undefined ? undefined : timestampDate(l.expireTime),
    temporary: l.temporary,
    language: l.language,
  };
}

/** An async iterable of a run's events, with a shortcut to collect them. */
export interface RunStream extends AsyncIterable<RunEvent> {
  /** Consumes the events and returns the collected output. */
  collect(): Promise<RunResult>;
}

/** What `installLibraries` did. */
export interface InstallResult {
  /** What the installer printed. */
  log: string;
  durationMs: number;
}

/**
 * A persistent interpreter in the session's container: variables, imports
 * and functions survive between its runs, like cells of a notebook. An
 * exception ends its run (traceback on stderr, exit code 1) and keeps the
 * context; a timeout interrupts the run, or restarts the context when the
 * code ignores the interrupt (`contextRestarted`). Private to its lease.
 * `await using ctx = await session.createContext()` deletes it at the end
 * of the block.
 */
export class Context implements AsyncDisposable {
  readonly id: string;
  readonly language: string;
  private readonly session: Session;
  private deleting: Promise<void> | undefined;

  /** @internal Use `Session.createContext`. */
  constructor(session: Session, id: string, language: string) {
    this.session = session;
    this.id = id;
    this.language = language;
  }

  /** Runs code in the context; events stream as for `Session.run`. */
  run(code: string | Uint8Array, options: ContextRunOptions = {}): RunStream {
    return this.session.stream({ code }, options, this.id);
  }

  /** Runs code in the context and collects its output. */
  runCollect(code: string | Uint8Array, options: ContextRunOptions = {}): Promise<RunResult> {
    return this.run(code, options).collect();
  }

  /** Ends the context and its interpreter (idempotent; a lost lease took it along). */
  delete(): Promise<void> {
    this.deleting ??= this.session.deleteContext(this.id);
    return this.deleting;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.delete();
  }
}

/**
 * A lease on a warm container. Use with `await using`, or call `release()`
 * in a `finally`; both are safe to combine and to repeat.
 */
export class Session implements AsyncDisposable {
  readonly lease: LeaseInfo;
  private readonly ctx: SessionContext;
  /** The loss, once the lease is lost. */
  #lost: LeaseLost | undefined;
  #ttlMs: number;
  /** Until when (performance.now()) the last confirmed renewal holds the lease; Infinity without a keepalive. */
  #confirmedUntil: number;
  #renewals = 0;
  /** Ends the keepalive (release, loss). */
  private readonly stop = new AbortController();
  /** Aborted when the keepalive gives up on the lease: the calls in flight end with LeaseLost. */
  readonly #cut = new AbortController();
  private releasing: Promise<void> | undefined;
  /** The background keepalive loop; it never rejects. */
  readonly #keepalive: Promise<void>;

  /**
   * @internal Use `SandpoolClient.acquire`. `startedAt` (performance.now())
   * is when Acquire was called: the lease's TTL counts from then.
   */
  constructor(ctx: SessionContext, lease: PbLease, options: { keepAlive?: boolean; startedAt?: number } = {}) {
    this.ctx = ctx;
    this.lease = leaseFromPb(lease);
    this.#ttlMs = this.lease.ttlMs > 0 ? this.lease.ttlMs : DEFAULT_TTL_MS;
    const startedAt = options.startedAt ?? performance.now();
    if (options.keepAlive === false) {
      this.#confirmedUntil = Infinity;
      this.#keepalive = Promise.resolve();
    } else {
      this.#confirmedUntil = startedAt + this.#ttlMs;
      this.#keepalive = this.keepAliveLoop(startedAt).catch(() => undefined);
    }
  }

  get leaseId(): string {
    return this.lease.id;
  }

  get containerId(): string {
    return this.lease.containerId;
  }

  /** Why the lease is lost, once it is; undefined while it is usable. */
  get lost(): string | undefined {
    return this.#loss()?.reason;
  }

  /** True once `release()` was called. */
  get released(): boolean {
    return this.releasing !== undefined;
  }

  /** Keepalives the server confirmed so far. */
  get renewals(): number {
    return this.#renewals;
  }

  /** The loss, once the lease is lost (by the clock, too). */
  #loss(): LeaseLost | undefined {
    if (this.#lost === undefined && performance.now() > this.#confirmedUntil) {
      this.#lost = new LeaseLost(
        this.lease.id,
        `keepalive failed for longer than the ${this.#ttlMs / 1000}s TTL: the lease counts as expired`,
        Code.Unavailable,
      );
    }
    return this.#lost;
  }

  private markLost(lost: LeaseLost): void {
    this.#lost ??= lost;
    this.stop.abort();
  }

  private check(): void {
    if (this.releasing !== undefined) {
      throw new LeaseLost(this.lease.id, "the lease was released by this session", Code.FailedPrecondition, {
        state: LeaseState.RELEASED,
      });
    }
    const lost = this.#loss();
    if (lost !== undefined) {
      throw copyOf(lost);
    }
  }

  /**
   * Maps a call's error; an error about the lease marks the session lost. A
   * call cut because the keepalive gave up rejects with that loss.
   */
  private fail(err: unknown): Error {
    const mapped = mapLeaseError(err, this.lease.id);
    const lost = this.#loss();
    if (this.#cut.signal.aborted && mapped.code === Code.Canceled && lost !== undefined) {
      return copyOf(lost);
    }
    if (mapped instanceof LeaseLost) {
      this.markLost(mapped);
    }
    return mapped;
  }

  /** A unary call on the lease: checked first, cut when the keepalive gives up, its error mapped. */
  private async unary<T>(invoke: (options: CallOptions) => Promise<T>, timeoutMs = this.ctx.timeoutMs): Promise<T> {
    this.check();
    try {
      return await invoke({ timeoutMs, signal: this.#cut.signal });
    } catch (err) {
      throw this.fail(err);
    }
  }

  // ------------------------------------------------------------ runs

  /**
   * Runs code (a string, in the pool's language) or a command, and yields
   * its events as they arrive: started, stdout/stderr chunks, artifacts,
   * then exit. Breaking out of the loop (or aborting `signal`) kills the run.
   */
  run(program: Program, options: RunOptions = {}): RunStream {
    return this.stream(program, options, "");
  }

  /** @internal A run's stream, in a context when `contextId` is set. */
  stream(program: Program, options: RunOptions, contextId: string): RunStream {
    const events = this.runEvents(program, options, contextId);
    return {
      [Symbol.asyncIterator]: () => events[Symbol.asyncIterator](),
      collect: () => collect(events),
    };
  }

  /** Runs and collects stdout, stderr, exit code, end reason and artifacts. */
  runCollect(program: Program, options: RunOptions = {}): Promise<RunResult> {
    return collect(this.runEvents(program, options, ""));
  }

  /** Runs a program with arguments (no shell) and collects its output. */
  exec(argv: string[], options: RunOptions = {}): Promise<RunResult> {
    return this.runCollect({ argv }, options);
  }

  /** Runs a `/bin/sh -c` command line and collects its output. */
  shell(line: string, options: RunOptions = {}): Promise<RunResult> {
    return this.runCollect({ shell: line }, options);
  }

  private async *runEvents(program: Program, options: RunOptions, contextId: string): AsyncGenerator<RunEvent> {
    this.check();
    const request: MessageInitShape<typeof RunRequestSchema> = {
      contextId,
      leaseId: this.lease.id,
      program: programToPb(program),
      stdin: typeof options.stdin === "string" ? new TextEncoder().encode(options.stdin) : options.stdin,
      env: options.env ?? {},
      workingDir: options.workingDir ?? "",
      timeout: options.timeoutMs === undefined ? undefined : durationFromMs(options.timeoutMs),
      outputLimitBytes: options.outputLimitBytes === undefined ? undefined : BigInt(options.outputLimitBytes),
      plotFormat: options.plotFormat === undefined ? PlotFormat.UNSPECIFIED : PLOT_FORMATS[options.plotFormat],
    };
    const deadline =
      options.deadlineMs ??
      (options.timeoutMs === undefined ? RUN_DEFAULT_DEADLINE_MS : options.timeoutMs + RUN_DEADLINE_SLACK_MS);
    const decoder = new EventDecoder();
    try {
      // Leaving the loop early aborts the call, and the server kills the run.
      const responses = drive((call) => this.ctx.sessions.run(request, call), deadline, [options.signal, this.#cut.signal]);
      for await (const response of responses) {
        const event = decoder.decode(response);
        if (event?.type === "exit" && event.endReason === "lease_expired") {
          // The server killed the run because the lease ended under it.
          this.markLost(new LeaseLost(this.lease.id, `the lease ended during run: ${event.message}`));
        }
        if (event !== undefined) {
          yield event;
        }
      }
    } catch (err) {
      throw this.fail(err);
    }
  }

  /** Kills a running run (by the id of its started event). False if it had already ended. */
  async cancel(runId: string): Promise<boolean> {
    const r = await this.unary((call) => this.ctx.sessions.cancel({ leaseId: this.lease.id, runId }, call));
    return r.cancelled;
  }

  // ------------------------------------------------------------ contexts and libraries

  /**
   * Opens a persistent interpreter context (python; `language` defaults to
   * the pool's). Use it with `await using`, or `delete()` it.
   */
  async createContext(options: { language?: string; timeoutMs?: number } = {}): Promise<Context> {
    const r = await this.unary(
      (call) => this.ctx.sessions.createContext({ leaseId: this.lease.id, language: options.language ?? "" }, call),
      options.timeoutMs ?? Math.max(this.ctx.timeoutMs, 60_000),
    );
    return new Context(this, r.contextId, options.language ?? this.lease.language);
  }

  /** @internal Use `Context.delete`. */
  async deleteContext(contextId: string): Promise<void> {
    if (this.releasing !== undefined || this.#loss() !== undefined) {
      return; // the lease's end took its contexts along
    }
    try {
      await this.unary((call) => this.ctx.sessions.deleteContext({ leaseId: this.lease.id, contextId }, call));
    } catch (err) {
      if (err instanceof LeaseLost || (err instanceof SandpoolError && err.code === Code.NotFound)) {
        return;
      }
      throw err;
    }
  }

  /**
   * Installs libraries for this lease only (gone after the reset): package
   * names need the pool's `leaseInstalls`; paths of package files already in
   * the container (e.g. a wheel you uploaded) always work.
   */
  async installLibraries(libraries: string[], options: { timeoutMs?: number } = {}): Promise<InstallResult> {
    const r = await this.unary(
      (call) => this.ctx.sessions.installLibraries({ leaseId: this.lease.id, libraries }, call),
      options.timeoutMs ?? Math.max(this.ctx.timeoutMs, 600_000),
    );
    return { log: r.log, durationMs: durationToMs(r.duration) };
  }

  // ------------------------------------------------------------ files

  /** Writes `data` to the absolute `path` in the container (parents are created). */
  async upload(path: string, data: UploadSource, options: UploadOptions = {}): Promise<UploadResult> {
    this.check();
    const header = { leaseId: this.lease.id, path, mode: options.mode, tar: options.tar ?? false };
    async function* messages(): AsyncGenerator<UploadInit> {
      yield { part: { case: "header", value: header } };
      for await (const chunk of chunksOf(data)) {
        for (let at = 0; at < chunk.length; at += UPLOAD_CHUNK) {
          yield { part: { case: "chunk", value: chunk.subarray(at, at + UPLOAD_CHUNK) } };
        }
      }
    }
    const call = streamCall(options.timeoutMs ?? this.ctx.timeoutMs, [this.#cut.signal]);
    try {
      const r = await this.ctx.artifacts.upload(messages(), call.options);
      return { path: r.path, size: Number(r.size), sha256: r.sha256 };
    } catch (err) {
      throw this.fail(err);
    } finally {
      call.abort();
      call.dispose();
    }
  }

  /** Streams a local file to `path` in the container. */
  uploadFile(path: string, localPath: string, options: UploadOptions = {}): Promise<UploadResult> {
    return this.upload(path, createReadStream(localPath, { highWaterMark: UPLOAD_CHUNK }), options);
  }

  /** Reads a file (or a directory, as a tar archive) from the container. */
  async download(path: string, options: { timeoutMs?: number } = {}): Promise<Download> {
    this.check();
    let header: Omit<Download, "data"> | undefined;
    const chunks: Uint8Array[] = [];
    try {
      const stream = drive(
        (call) => this.ctx.artifacts.download({ leaseId: this.lease.id, path }, call),
        options.timeoutMs ?? this.ctx.timeoutMs,
        [this.#cut.signal],
      );
      for await (const m of stream) {
        if (m.part.case === "header") {
          const h = m.part.value;
          header = {
            path: h.path,
            kind: h.kind === DownloadKind.TAR ? "tar" : "file",
            mode: h.mode,
            size: Number(h.size),
          };
        } else if (m.part.case === "chunk") {
          chunks.push(m.part.value);
        }
      }
    } catch (err) {
      throw this.fail(err);
    }
    if (header === undefined) {
      throw mapError(new Error(`the download of ${path} came without a header`));
    }
    return { ...header, data: concat(chunks) };
  }

  /** Downloads `path` into the local file `localPath`. */
  async downloadFile(path: string, localPath: string, options: { timeoutMs?: number } = {}): Promise<Omit<Download, "data">> {
    const { data, ...header } = await this.download(path, options);
    await pipeline(Readable.from([data]), createWriteStream(localPath));
    return header;
  }

  /** Files the lease's runs left in the pool's output directory, oldest first. */
  async listArtifacts(runId = ""): Promise<ArtifactMeta[]> {
    const r = await this.unary((call) => this.ctx.artifacts.listArtifacts({ leaseId: this.lease.id, runId }, call));
    return r.artifacts.map(artifactFromPb);
  }

  // ------------------------------------------------------------ end

  /**
   * Ends the lease now; the container is reset for the next client. Safe to
   * call more than once and on a lost lease (then it does nothing more). It
   * rejects only when the server could not be told (the lease then expires
   * at its TTL).
   */
  release(): Promise<void> {
    this.releasing ??= this.doRelease();
    return this.releasing;
  }

  private async doRelease(): Promise<void> {
    this.#loss(); // a loss before the release stays the reason; none comes after it
    this.#confirmedUntil = Infinity;
    this.stop.abort();
    await this.#keepalive;
    try {
      await this.ctx.sessions.release({ leaseId: this.lease.id }, { timeoutMs: this.ctx.timeoutMs });
    } catch (err) {
      const mapped = mapError(err);
      // Gone already: releasing is idempotent from the caller's view.
      if (mapped.code === Code.NotFound || mapped.code === Code.FailedPrecondition) {
        return;
      }
      throw mapped;
    }
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.release();
  }

  // ------------------------------------------------------------ keepalive

  /**
   * The keepalive, under the contract shared with the Python and Rust
   * clients:
   * - a renewal goes out a third of the TTL after the last confirmed one was
   *   sent (the first, a third of the TTL after Acquire), on one KeepAlive
   *   stream that is reopened when it breaks;
   * - an ACTIVE answer confirms the lease until that renewal's send time
   *   plus the TTL the server answers;
   * - no wait (opening the stream, sending, the answer) outlasts that time:
   *   when it passes unconfirmed the lease is lost ("keepalive failed for
   *   longer than the TTL"), the calls in flight reject with LeaseLost, and
   *   the server is told with a best-effort Release;
   * - an answer in another state (EXPIRED, RELEASED, REVOKED, NOT_FOUND), or
   *   an error saying the lease is gone, loses it with that state;
   * - the clock decides too: once the time has passed, `lost` says so and
   *   every call rejects with LeaseLost without a round trip, even before
   *   this loop runs.
   * Its timers are unref'd and every error is caught here.
   */
  private async keepAliveLoop(startedAt: number): Promise<void> {
    const stop = this.stop.signal;
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
            // Ends with `stop` (release, loss) or at its deadline (then reopened).
            const call = streamCall(Math.max(KEEPALIVE_STREAM_DEADLINE_MS, 10 * this.#ttlMs), [stop]);
            const requests = new RequestQueue<KeepAliveInit>();
            const responses = this.ctx.sessions.keepAlive(requests, call.options)[Symbol.asyncIterator]();
            stream = { call, requests, responses };
          }
          stream.requests.push({ leaseId: this.lease.id });
          const next = stream.responses.next();
          // Settled later when the call is aborted: never unhandled.
          next.catch(() => undefined);
          const answer = await Promise.race([next, pause(left, stop).then(() => "timeout" as const)]);
          if (stop.aborted) {
            return;
          }
          if (answer === "timeout") {
            close();
            nextAt = sent + left; // the lease's time is up: give up then
            continue;
          }
          if (answer.done === true) {
            close(); // the server ended the stream (say, it is stopping): reopen
            continue;
          }
          const r = answer.value;
          if (r.state !== LeaseState.ACTIVE) {
            this.markLost(new LeaseLost(this.lease.id, stateReason(r.state), Code.FailedPrecondition, { state: r.state }));
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
          const mapped = mapLeaseError(err, this.lease.id);
          if (mapped instanceof LeaseLost) {
            this.markLost(mapped);
            return;
          }
          if (mapped.code === Code.DeadlineExceeded) {
            nextAt = sent; // the stream's own deadline ended it: reopen now
          }
        }
      }
      // No renewal was confirmed within the TTL.
      this.#loss();
      this.#cut.abort();
      this.ctx.sessions.release({ leaseId: this.lease.id }, { timeoutMs: this.ctx.timeoutMs }).catch(() => undefined);
    } finally {
      close();
    }
  }
}

function programToPb(program: Program): MessageInitShape<typeof RunRequestSchema>["program"] {
  if (typeof program === "string") {
    return { case: "code", value: { source: { case: "text", value: program } } };
  }
  if ("code" in program) {
    const source =
      typeof program.code === "string"
        ? ({ case: "text", value: program.code } as const)
        : ({ case: "data", value: program.code } as const);
    return { case: "code", value: { source, language: program.language ?? "" } };
  }
  if ("argv" in program) {
    return { case: "command", value: { argv: program.argv } };
  }
  return { case: "command", value: { shell: program.shell } };
}

async function* chunksOf(data: UploadSource): AsyncGenerator<Uint8Array> {
  if (typeof data === "string") {
    yield new TextEncoder().encode(data);
  } else if (data instanceof Uint8Array) {
    yield data;
  } else {
    for await (const chunk of data as AsyncIterable<Uint8Array>) {
      yield typeof chunk === "string" ? new TextEncoder().encode(chunk) : chunk;
    }
  }
}
