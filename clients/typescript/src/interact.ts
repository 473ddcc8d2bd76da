// Interactive runs: the requests a client streams to its run (input, end of
// input, signals, terminal sizes) while it reads the run's events.

import { constants } from "node:os";

import type { MessageInitShape } from "@bufbuild/protobuf";

import type { InteractRequestSchema } from "./gen/sandpool/v1/session_pb.js";
import { Code, InvalidArgument, SandpoolError } from "./errors.js";
import type { RunOptions } from "./run.js";

export type InteractInit = MessageInitShape<typeof InteractRequestSchema>;

/** Requests queued before `write` and the others wait (for the call to take them). */
const QUEUE_LIMIT = 8;

/** Options of `Session.interact`: those of a run, but input comes by `write`. */
export interface InteractOptions extends Omit<RunOptions, "stdin"> {
  /**
   * Give the program a terminal of this size: its output then comes as one
   * stdout stream, shaped by the terminal (echo, CR LF), and a "\x03"
   * written interrupts its foreground job as Ctrl-C does.
   */
  terminal?: { rows: number; columns: number };
}

/** What a client sends its interactive run while it runs. */
export interface InteractInput {
  /** Writes to the program's standard input (waits while it does not read). */
  write(data: string | Uint8Array): Promise<void>;
  /** Closes the program's standard input: it reads end of file. */
  closeStdin(): Promise<void>;
  /** Sends a signal ("SIGINT", or its Linux number) to every process of the run. */
  signal(signal: NodeJS.Signals | number): Promise<void>;
  /** Resizes the run's terminal (a run started with `terminal`). */
  resize(rows: number, columns: number): Promise<void>;
}

/** A signal's Linux number. */
export function signalNumber(signal: NodeJS.Signals | number): number {
  if (typeof signal === "number") {
    return signal;
  }
  const n = (constants.signals as Record<string, number | undefined>)[signal];
  if (n === undefined) {
    throw new InvalidArgument(Code.InvalidArgument, `unknown signal ${signal}`);
  }
  return n;
}

/**
 * The requests of one interactive call, in order, read by the call as it
 * sends them. `push` resolves at once while fewer than QUEUE_LIMIT wait,
 * else once the call has taken enough; it rejects once the call is over.
 */
export class InteractQueue implements AsyncIterable<InteractInit> {
  private readonly items: InteractInit[] = [];
  private readonly waiting: { resolve: () => void; reject: (e: Error) => void }[] = [];
  private wake: (() => void) | undefined;
  private over = false;

  push(item: InteractInit): Promise<void> {
    if (this.over) {
      return Promise.reject(new SandpoolError(Code.FailedPrecondition, "the interactive run is over; its events say how it ended"));
    }
    this.items.push(item);
    this.notify();
    if (this.items.length <= QUEUE_LIMIT) {
      return Promise.resolve();
    }
    return new Promise((resolve, reject) => this.waiting.push({ resolve, reject }));
  }

  /** The call is over: nothing more is sent. */
  end(): void {
    this.over = true;
    this.items.length = 0;
    for (const w of this.waiting.splice(0)) {
      w.reject(new SandpoolError(Code.FailedPrecondition, "the interactive run is over; its events say how it ended"));
    }
    this.notify();
  }

  private notify(): void {
    const w = this.wake;
    this.wake = undefined;
    w?.();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<InteractInit> {
    for (;;) {
      const item = this.items.shift();
      if (item !== undefined) {
        // Room again: let the oldest waiting writer go.
        if (this.items.length <= QUEUE_LIMIT) {
          this.waiting.shift()?.resolve();
        }
        yield item;
      } else if (this.over) {
        return;
      } else {
        await new Promise<void>((resolve) => {
          this.wake = resolve;
        });
      }
    }
  }
}

/** The input half of an interaction over `queue`. */
export function inputOf(queue: InteractQueue): InteractInput {
  let stdinClosed = false;
  return {
    write: (data) =>
      queue.push({
        action: { case: "stdin", value: typeof data === "string" ? new TextEncoder().encode(data) : data },
      }),
    closeStdin: () => {
      if (stdinClosed) {
        return Promise.resolve();
      }
      stdinClosed = true;
      return queue.push({ action: { case: "closeStdin", value: {} } });
    },
    signal: async (signal) => queue.push({ action: { case: "signal", value: signalNumber(signal) } }),
    resize: (rows, columns) => queue.push({ action: { case: "resize", value: { rows, columns } } }),
  };
}
