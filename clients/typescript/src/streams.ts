// Streaming calls with deadlines that never keep Node running.
//
// connect-es 2.1.1 clears the deadline timer of a streaming call only when
// the response stream is read to its end or fails. A call that is abandoned
// midway (a `break` out of a run's events, a keepalive stream that is
// replaced) would leave a ref'd timer that holds the process open until the
// deadline passes, up to an hour. So this module keeps the deadline itself:
// connect gets no timeout, the server still gets `grpc-timeout`, and an
// unref'd timer aborts the call with DEADLINE_EXCEEDED.

import { Code, ConnectError, type CallOptions } from "@connectrpc/connect";

/** The largest value the grpc-timeout header can carry (8 digits). */
const MAX_HEADER_TIMEOUT = 99_999_999;

/** Options for one streaming call, and the means to end it. */
export interface StreamCall {
  options: CallOptions;
  /** Aborts the call (idempotent). */
  abort(): void;
  /** Clears the deadline timer and unlinks the outer signal. */
  dispose(): void;
}

/**
 * Call options with a deadline of `deadlineMs` (none when undefined or <= 0)
 * that also abort when one of the `outer` signals does.
 */
export function streamCall(deadlineMs: number | undefined, outer: (AbortSignal | undefined)[] = []): StreamCall {
  const abort = new AbortController();
  const signals = outer.filter((s): s is AbortSignal => s !== undefined);
  const onAbort = (event: Event) => abort.abort((event.target as AbortSignal).reason);
  for (const signal of signals) {
    signal.addEventListener("abort", onAbort, { once: true });
    if (signal.aborted) {
      abort.abort(signal.reason);
    }
  }
  let timer: NodeJS.Timeout | undefined;
  const headers: Record<string, string> = {};
  if (deadlineMs !== undefined && deadlineMs > 0) {
    const ms = Math.min(Math.ceil(deadlineMs), MAX_HEADER_TIMEOUT);
    headers["grpc-timeout"] = `${ms}m`;
    timer = setTimeout(() => abort.abort(new ConnectError("the operation timed out", Code.DeadlineExceeded)), ms);
    timer.unref();
  }
  return {
    // timeoutMs <= 0: no deadline timer inside connect.
    options: { signal: abort.signal, timeoutMs: 0, headers },
    abort: () => abort.abort(),
    dispose: () => {
      clearTimeout(timer);
      for (const signal of signals) {
        signal.removeEventListener("abort", onAbort);
      }
    },
  };
}

/**
 * Iterates the response stream of a call opened with `open(options)`.
 * Leaving early (break, return, a throw in the loop body), aborting one of
 * the `outer` signals or reaching the deadline aborts the call.
 */
export async function* drive<T>(
  open: (options: CallOptions) => AsyncIterable<T>,
  deadlineMs: number | undefined,
  outer: (AbortSignal | undefined)[] = [],
): AsyncGenerator<T> {
  const call = streamCall(deadlineMs, outer);
  try {
    yield* open(call.options);
  } finally {
    call.abort();
    call.dispose();
  }
}
