// A lease held by this process: kept alive in the background over the
// KeepAlive stream at a third of its TTL (the keepalive contract shared with
// the Python and Rust clients: see `Keeper` in keepalive.ts), released by
// `release()` or `await using`. Once the lease is lost every call rejects
// with LeaseLost.

import { createReadStream, createWriteStream } from "node:fs";
import { pipeline } from "node:stream/promises";
import { Readable } from "node:stream";

import type { MessageInitShape } from "@bufbuild/protobuf";
import { durationFromMs, timestampDate } from "@bufbuild/protobuf/wkt";
import { ConnectError, type CallOptions, type Client as ConnectClient } from "@connectrpc/connect";
import { randomBytes } from "node:crypto";

import { ArtifactService, DownloadKind, type UploadRequestSchema } from "./gen/sandpool/v1/artifact_pb.js";
import {
  LeaseState,
  PlotFormat,
  SessionService,
  type AcquireRequestSchema,
  type AcquireResponse,
  type Lease as PbLease,
  type RunRequestSchema,
} from "./gen/sandpool/v1/session_pb.js";
import { Code, LeaseLost, SandpoolError, isTransportFailure, mapError, mapLeaseError } from "./errors.js";
import { durationToMs } from "./pools.js";
import { Keeper, answerReason, type KeepAliveInit, type KeepAliveTarget } from "./keepalive.js";
import { drive, streamCall } from "./streams.js";
import {
  InteractQueue,
  inputOf,
  type InteractInit,
  type InteractInput,
  type InteractOptions,
} from "./interact.js";
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

/** The TTL of a lease whose Acquire answer names none. */
const DEFAULT_TTL_MS = 30_000;
/** Added to a run's timeout for its call's deadline. */
const RUN_DEADLINE_SLACK_MS = 30_000;
/** First wait before calling again after a run's connection broke; it doubles up to the max. */
const RECONNECT_FIRST_DELAY_MS = 50;
const RECONNECT_MAX_DELAY_MS = 1_000;

/** A run id for a resumable run: random, so a lease never sees one twice. */
function newRunId(): string {
  return `t${randomBytes(16).toString("hex")}`;
}
/** Default run call deadline when no timeout is given: max_run_timeout's default plus slack. */
const RUN_DEFAULT_DEADLINE_MS = 3600_000 + RUN_DEADLINE_SLACK_MS;
/** Upload chunk size. */
const UPLOAD_CHUNK = 1 << 20;

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

/** @internal The Acquire request for `pool` with `options`. */
export function acquireRequest(pool: string, options: AcquireOptions): MessageInitShape<typeof AcquireRequestSchema> {
  return {
    pool,
    ttl: options.ttlMs === undefined ? undefined : durationFromMs(options.ttlMs),
    env: options.env ?? {},
    files: (options.files ?? []).map((f) => ({
      path: f.path,
      content: typeof f.content === "string" ? new TextEncoder().encode(f.content) : f.content,
      mode: f.mode,
    })),
  };
}

/**
 * @internal The earliest (performance.now()) the lease of an Acquire sent at
 * `sentAt` can have been granted, its TTL counting from then: the server says
 * how long the request waited for a container (a lease that waited longer
 * than its TTL is not lost on arrival).
 */
export function grantedFrom(sentAt: number, r: AcquireResponse): number {
  const queued = r.queued === undefined ? 0 : durationToMs(r.queued);
  // Never later than the answer: a lease cannot be granted after it.
  return Math.min(sentAt + Math.max(0, queued), performance.now());
}

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

type UploadInit = MessageInitShape<typeof UploadRequestSchema>;

const STATE_REASONS: Partial<Record<LeaseState, string>> = {
  [LeaseState.EXPIRED]: "the lease expired on the server (no keepalive arrived within its TTL)",
  [LeaseState.RELEASED]: "the lease was released",
  [LeaseState.REVOKED]: "the server revoked the lease (its pool was deleted or the server is stopping)",
  [LeaseState.NOT_FOUND]: "the server does not know the lease",
  [LeaseState.CONTAINER_LOST]: "the lease's container died or was removed outside sandpool (acquire a new one)",
  [LeaseState.POOL_DELETED]: "the lease's pool was deleted because its owner stopped keeping it alive",
  [LeaseState.LIFETIME_EXCEEDED]: "the lease reached its pool's max_lease_lifetime (acquire a new one)",
  [LeaseState.REPLICA_GONE]: "the server replica that owned the lease is gone (acquire a new one)",
};

/** A lease, as its keepalive renews it. */
class LeaseTarget implements KeepAliveTarget<LeaseLost> {
  readonly request: KeepAliveInit;

  constructor(
    private readonly ctx: SessionContext,
    private readonly leaseId: string,
  ) {
    this.request = { leaseId };
  }

  expired(ttlMs: number): LeaseLost {
    return new LeaseLost(
      this.leaseId,
      `keepalive failed for longer than the ${ttlMs / 1000}s TTL: the lease counts as expired`,
      Code.Unavailable,
    );
  }

  answered(state: LeaseState): LeaseLost {
    return new LeaseLost(this.leaseId, answerReason(state, STATE_REASONS), Code.FailedPrecondition, { state });
  }

  gone(err: unknown): LeaseLost | undefined {
    const mapped = mapLeaseError(err, this.leaseId);
    return mapped instanceof LeaseLost ? mapped : undefined;
  }

  abandon(): Promise<unknown> {
    return this.ctx.sessions.release({ leaseId: this.leaseId }, { timeoutMs: this.ctx.timeoutMs });
  }
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

/** An interactive run: its events, and what to send it while it runs. */
export interface Interaction extends RunStream, InteractInput {}

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
  /** Aborted when the keepalive gives up on the lease: the calls in flight end with LeaseLost. */
  readonly #cut = new AbortController();
  /** The lease's keepalive (and what is known of its loss). */
  readonly #keeper: Keeper<LeaseLost>;
  private releasing: Promise<void> | undefined;

  /**
   * @internal Use `SandpoolClient.acquire`. `startedAt` (performance.now())
   * is when Acquire was called: the lease's TTL counts from then.
   */
  constructor(ctx: SessionContext, lease: PbLease, options: { keepAlive?: boolean; startedAt?: number } = {}) {
    this.ctx = ctx;
    this.lease = leaseFromPb(lease);
    this.#keeper = new Keeper(
      ctx.sessions,
      new LeaseTarget(ctx, this.lease.id),
      this.lease.ttlMs > 0 ? this.lease.ttlMs : DEFAULT_TTL_MS,
      options.startedAt ?? performance.now(),
      { run: options.keepAlive !== false, onGiveUp: () => this.#cut.abort() },
    );
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
    return this.#keeper.renewals;
  }

  /** The loss, once the lease is lost (by the clock, too). */
  #loss(): LeaseLost | undefined {
    return this.#keeper.loss();
  }

  private markLost(lost: LeaseLost): void {
    this.#keeper.markLost(lost);
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

  /**
   * Starts an interactive run of `program`: `write` its input while it
   * runs, `closeStdin()`, `signal("SIGINT")` and, with `options.terminal`,
   * `resize(rows, columns)`; iterate it for the events as they arrive.
   * Breaking out of the loop (or aborting `options.signal`) kills the run.
   */
  interact(program: Program, options: InteractOptions = {}): Interaction {
    const queue = new InteractQueue();
    const start: InteractInit = {
      action: {
        case: "start",
        value: { run: this.runRequest(program, options, ""), terminal: options.terminal },
      },
    };
    // Queued, not sent: the call opens when the events are first read.
    void queue.push(start);
    const events = this.interactEvents(queue, options);
    return {
      [Symbol.asyncIterator]: () => events[Symbol.asyncIterator](),
      collect: () => collect(events),
      ...inputOf(queue),
    };
  }

  private async *interactEvents(queue: InteractQueue, options: InteractOptions): AsyncGenerator<RunEvent> {
    this.check();
    const deadline =
      options.deadlineMs ??
      (options.timeoutMs === undefined ? RUN_DEFAULT_DEADLINE_MS : options.timeoutMs + RUN_DEADLINE_SLACK_MS);
    const decoder = new EventDecoder();
    try {
      const responses = drive(
        (call) => this.ctx.sessions.interact(queue, call),
        deadline,
        [options.signal, this.#cut.signal],
      );
      for await (const response of responses) {
        const event = decoder.decode(response);
        if (event !== undefined) {
          yield event;
        }
      }
    } catch (err) {
      throw this.fail(err);
    } finally {
      queue.end();
    }
  }

  private runRequest(
    program: Program,
    options: RunOptions,
    contextId: string,
  ): MessageInitShape<typeof RunRequestSchema> {
    return {
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
  }

  /**
   * A resumable run's events: the run has a run id of its own, and a broken
   * connection is picked up again (its Run repeated with the same id, which
   * never runs it twice, until an event came; then Attach after the last
   * event) until the lease is lost or the run's deadline passes. Leaving
   * the loop early cancels the run (it outlives its stream on the server).
   */
  private async *runEvents(program: Program, options: RunOptions, contextId: string): AsyncGenerator<RunEvent> {
    this.check();
    const request = { ...this.runRequest(program, options, contextId), runId: newRunId() };
    const deadline =
      options.deadlineMs ??
      (options.timeoutMs === undefined ? RUN_DEFAULT_DEADLINE_MS : options.timeoutMs + RUN_DEADLINE_SLACK_MS);
    const deadlineAt = Date.now() + deadline;
    const decoder = new EventDecoder();
    const outer = [options.signal, this.#cut.signal];
    let lastSeq = 0;
    let exited = false;
    let delay = RECONNECT_FIRST_DELAY_MS;
    try {
      for (;;) {
        const after = lastSeq;
        const open = (call: CallOptions) =>
          after === 0
            ? this.ctx.sessions.run(request, call)
            : this.ctx.sessions.attach({ leaseId: this.lease.id, runId: request.runId, afterSeq: BigInt(after) }, call);
        try {
          for await (const response of drive(open, Math.max(1, deadlineAt - Date.now()), outer)) {
            lastSeq = Number(response.seq);
            delay = RECONNECT_FIRST_DELAY_MS;
            const event = decoder.decode(response);
            if (event?.type === "exit") {
              exited = true;
              if (event.endReason === "lease_expired") {
                // The server killed the run because the lease ended under it.
                this.markLost(new LeaseLost(this.lease.id, `the lease ended during run: ${event.message}`));
              }
            }
            if (event !== undefined) {
              yield event;
            }
          }
          if (exited) {
            return;
          }
          // Ended without the exit: a proxy closed the stream.
        } catch (err) {
          if (outer.some((s) => s?.aborted) || !isTransportFailure(err)) {
            throw err;
          }
        }
        await new Promise((resolve) => setTimeout(resolve, delay).unref());
        delay = Math.min(delay * 2, RECONNECT_MAX_DELAY_MS);
        this.check();
        if (Date.now() >= deadlineAt) {
          throw new ConnectError("the run's connection broke and did not come back before its deadline", Code.DeadlineExceeded);
        }
      }
    } catch (err) {
      throw this.fail(err);
    } finally {
      if (!exited) {
        void this.ctx.sessions
          .cancel({ leaseId: this.lease.id, runId: request.runId }, { timeoutMs: this.ctx.timeoutMs })
          .catch(() => undefined);
      }
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
    await this.#keeper.end(); // a loss before the release stays the reason; none comes after it
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
