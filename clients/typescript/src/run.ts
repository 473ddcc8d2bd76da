// Runs: the typed events of a run as they arrive, and their collected form.

import { timestampDate } from "@bufbuild/protobuf/wkt";

import type { ArtifactInfo as PbArtifactInfo } from "./gen/sandpool/v1/artifact_pb.js";
import { EndReason, type RunResponse } from "./gen/sandpool/v1/session_pb.js";
import { Code, SandpoolError } from "./errors.js";
import { durationToMs } from "./pools.js";

/** What to run: code in the pool's language (a string), or one of these. */
export type Program =
  | string
  | { code: string | Uint8Array; language?: string }
  | { argv: string[] }
  | { shell: string };

export interface RunOptions {
  /** Fed to standard input, then end of file. */
  stdin?: string | Uint8Array;
  /** Extra environment variables. */
  env?: Record<string, string>;
  /** Default /sandbox. */
  workingDir?: string;
  /** Kill the run after this long. Default: the pool's default_run_timeout. */
  timeoutMs?: number;
  /** Output cap per stream; default and maximum: the pool's. */
  outputLimitBytes?: number;
  /**
   * Deadline of the whole call. Default: timeoutMs plus 30 s when timeoutMs
   * is set, else one hour plus 30 s (the pools' default max_run_timeout).
   */
  deadlineMs?: number;
  /** Aborting drops the stream; the server then kills the run. */
  signal?: AbortSignal;
  /** Format of captured figures (matplotlib...). Default "png". */
  plotFormat?: "png" | "svg" | "pdf";
}

export type EndReasonName =
  | "exited"
  | "signaled"
  | "timeout"
  | "cancelled"
  | "output_limit"
  | "lease_expired"
  | "runner_lost"
  | "unspecified";

/** A file a run produced (or that ListArtifacts found). */
export interface ArtifactMeta {
  /** Path relative to the output directory. */
  name: string;
  /** Absolute path in the container. */
  path: string;
  mimeType: string;
  size: number;
  /** Hex SHA-256; empty when the server did not compute it. */
  sha256: string;
  /** Run that produced it; empty when unknown. */
  runId: string;
  modifyTime: Date | undefined;
  /** A figure captured from a plotting library (under `plots/` in the output directory). */
  plot: boolean;
}

export interface RunStartedEvent {
  type: "started";
  seq: number;
  /** For `session.cancel(runId)`. */
  runId: string;
  startTime: Date | undefined;
}

export interface OutputEvent {
  type: "stdout" | "stderr";
  seq: number;
  data: Uint8Array;
  /** `data` as UTF-8; a character split across chunks is decoded whole in the chunk that completes it. */
  text: string;
}

export interface ArtifactEvent {
  type: "artifact";
  seq: number;
  info: ArtifactMeta;
  /** Offset of `data` in the file. */
  offset: number;
  data: Uint8Array;
  /** The file's final chunk. */
  last: boolean;
  /** The bytes are not in the stream (over the server's cap): fetch them with `download(info.path)`. */
  omitted: boolean;
}

export interface ExitEvent {
  type: "exit";
  seq: number;
  /** 128 + signal number when killed by a signal. */
  exitCode: number;
  endReason: EndReasonName;
  signal: number;
  durationMs: number;
  stdoutBytes: number;
  stderrBytes: number;
  /** Output was cut at the cap. */
  truncated: boolean;
  /** e.g. "killed after the 2s timeout". */
  message: string;
  /** The run's context had to be restarted to stop it. */
  contextRestarted: boolean;
}

/**
 * Events the server no longer had when a broken stream was resumed (its
 * buffer for the run overflowed meanwhile): their sequence numbers and the
 * bytes of each kind lost.
 */
export interface GapEvent {
  type: "gap";
  /** `toSeq`. */
  seq: number;
  fromSeq: number;
  toSeq: number;
  stdoutBytes: number;
  stderrBytes: number;
  artifactBytes: number;
}

/** One event of a run, in order: started first, exit last. */
export type RunEvent = RunStartedEvent | OutputEvent | ArtifactEvent | ExitEvent | GapEvent;

/** A produced file with its bytes. */
export interface Artifact extends ArtifactMeta {
  /** Empty when `omitted`. */
  data: Uint8Array;
  /** The server left the bytes out of the stream: fetch them with `download(path)`. */
  omitted: boolean;
}

/** Options of a run in a persistent context (code only: no stdin, env or working dir). */
export type ContextRunOptions = Pick<RunOptions, "timeoutMs" | "outputLimitBytes" | "deadlineMs" | "signal" | "plotFormat">;

/** A finished run's output, collected. */
export interface RunResult {
  runId: string;
  stdout: string;
  stderr: string;
  stdoutBytes: Uint8Array;
  stderrBytes: Uint8Array;
  exitCode: number;
  endReason: EndReasonName;
  signal: number;
  durationMs: number;
  truncated: boolean;
  message: string;
  /** Every file the run produced, whole (reassembled from its chunks), in order. */
  artifacts: Artifact[];
  /** The captured figures among `artifacts` (`plot: true`): plt.show() and figures left open. */
  plots: Artifact[];
  /** The run's context was restarted to stop it: its state is gone. */
  contextRestarted: boolean;
  /** Output lost while the connection was broken for longer than the server could keep it (almost always empty). */
  gaps: GapEvent[];
}

const END_REASONS: Record<EndReason, EndReasonName> = {
  [EndReason.UNSPECIFIED]: "unspecified",
  [EndReason.EXITED]: "exited",
  [EndReason.SIGNALED]: "signaled",
  [EndReason.TIMEOUT]: "timeout",
  [EndReason.CANCELLED]: "cancelled",
  [EndReason.OUTPUT_LIMIT]: "output_limit",
  [EndReason.LEASE_EXPIRED]: "lease_expired",
  [EndReason.RUNNER_LOST]: "runner_lost",
};

export function artifactFromPb(a: PbArtifactInfo | undefined): ArtifactMeta {
  return {
    name: a?.name ?? "",
    path: a?.path ?? "",
    mimeType: a?.mimeType ?? "",
    size: Number(a?.size ?? 0n),
    sha256: a?.sha256 ?? "",
    runId: a?.runId ?? "",
    modifyTime: a?.modifyTime === undefined ? undefined : timestampDate(a.modifyTime),
    plot: a?.plot ?? false,
  };
}

/** Converts the wire events of one run, decoding text per stream. */
export class EventDecoder {
  private readonly stdout = new TextDecoder("utf-8");
  private readonly stderr = new TextDecoder("utf-8");

  decode(r: RunResponse): RunEvent | undefined {
    const seq = Number(r.seq);
    const e = r.event;
    switch (e.case) {
      case "started":
        return {
          type: "started",
          seq,
          runId: e.value.runId,
          startTime: e.value.startTime === undefined ? undefined : timestampDate(e.value.startTime),
        };
      case "stdout":
        return { type: "stdout", seq, data: e.value.data, text: this.stdout.decode(e.value.data, { stream: true }) };
      case "stderr":
        return { type: "stderr", seq, data: e.value.data, text: this.stderr.decode(e.value.data, { stream: true }) };
      case "artifact":
        return {
          type: "artifact",
          seq,
          info: artifactFromPb(e.value.info),
          offset: Number(e.value.offset),
          data: e.value.data,
          last: e.value.last,
          omitted: e.value.omitted,
        };
      case "gap":
        return {
          type: "gap",
          seq,
          fromSeq: Number(e.value.fromSeq),
          toSeq: Number(e.value.toSeq),
          stdoutBytes: Number(e.value.stdoutBytes),
          stderrBytes: Number(e.value.stderrBytes),
          artifactBytes: Number(e.value.artifactBytes),
        };
      case "exit":
        return {
          type: "exit",
          seq,
          exitCode: e.value.exitCode,
          endReason: END_REASONS[e.value.endReason] ?? "unspecified",
          signal: e.value.signal,
          durationMs: durationToMs(e.value.duration),
          stdoutBytes: Number(e.value.stdoutBytes),
          stderrBytes: Number(e.value.stderrBytes),
          truncated: e.value.truncated,
          message: e.value.message,
          contextRestarted: e.value.contextRestarted,
        };
      default:
        // An event kind newer than this client: skipped.
        return undefined;
    }
  }
}

export function concat(chunks: Uint8Array[]): Uint8Array {
  const total = chunks.reduce((n, c) => n + c.length, 0);
  const out = new Uint8Array(total);
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.length;
  }
  return out;
}

/** Collects the events of a run into a RunResult. */
export async function collect(events: AsyncIterable<RunEvent>): Promise<RunResult> {
  let runId = "";
  const out: Uint8Array[] = [];
  const err: Uint8Array[] = [];
  const files = new Map<string, { info: ArtifactMeta; chunks: { offset: number; data: Uint8Array }[]; omitted: boolean }>();
  let exit: ExitEvent | undefined;
  const gaps: GapEvent[] = [];
  for await (const e of events) {
    switch (e.type) {
      case "gap":
        gaps.push(e);
        break;
      case "started":
        runId = e.runId;
        break;
      case "stdout":
        out.push(e.data);
        break;
      case "stderr":
        err.push(e.data);
        break;
      case "artifact": {
        const key = e.info.path || e.info.name;
        const f = files.get(key) ?? { info: e.info, chunks: [], omitted: false };
        if (e.data.length > 0) {
          f.chunks.push({ offset: e.offset, data: e.data });
        }
        f.omitted ||= e.omitted;
        if (e.last) {
          f.info = e.info; // the final chunk's info carries the sha256
        }
        files.set(key, f);
        break;
      }
      case "exit":
        exit = e;
        break;
    }
  }
  if (exit === undefined) {
    throw new SandpoolError(Code.DataLoss, "the run's stream ended without an exit event");
  }
  const stdoutBytes = concat(out);
  const stderrBytes = concat(err);
  const utf8 = new TextDecoder("utf-8");
  const artifacts = [...files.values()].map((f) => ({ ...f.info, data: assemble(f.chunks), omitted: f.omitted }));
  return {
    runId,
    stdout: utf8.decode(stdoutBytes),
    stderr: utf8.decode(stderrBytes),
    stdoutBytes,
    stderrBytes,
    exitCode: exit.exitCode,
    endReason: exit.endReason,
    signal: exit.signal,
    durationMs: exit.durationMs,
    truncated: exit.truncated,
    message: exit.message,
    artifacts,
    plots: artifacts.filter((a) => a.plot),
    contextRestarted: exit.contextRestarted,
    gaps,
  };
}

/** A file's bytes from its chunks, each placed at its offset. */
function assemble(chunks: { offset: number; data: Uint8Array }[]): Uint8Array {
  const size = chunks.reduce((n, c) => Math.max(n, c.offset + c.data.length), 0);
  const out = new Uint8Array(size);
  for (const c of chunks) {
    out.set(c.data, c.offset);
  }
  return out;
}
