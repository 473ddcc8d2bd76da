// W3C trace context on every call: an explicit traceparent, else the active
// OpenTelemetry context when @opentelemetry/api is installed (an optional
// peer dependency: loaded on first use, never required).

import type { Interceptor } from "@connectrpc/connect";

import { Code, InvalidArgument } from "./errors.js";

const TRACEPARENT = /^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$/;

/** What this module needs of @opentelemetry/api. */
interface OtelApi {
  context: { active(): unknown };
  propagation: {
    inject(context: unknown, carrier: Record<string, string>): void;
  };
}

// The package's name in a variable: the compiler must not require it.
const OTEL_API = "@opentelemetry/api";
let otel: Promise<OtelApi | undefined> | undefined;

function loadOtel(): Promise<OtelApi | undefined> {
  otel ??= import(OTEL_API).then(
    (api: OtelApi) => api,
    () => undefined,
  );
  return otel;
}

/** The trace context headers for a call made now. */
export async function traceHeaders(traceparent?: string, tracestate?: string): Promise<Record<string, string>> {
  if (traceparent !== undefined) {
    return tracestate ? { traceparent, tracestate } : { traceparent };
  }
  const api = await loadOtel();
  if (api === undefined) {
    return {};
  }
  const carrier: Record<string, string> = {};
  api.propagation.inject(api.context.active(), carrier);
  const headers: Record<string, string> = {};
  for (const key of ["traceparent", "tracestate"]) {
    const value = carrier[key];
    if (value) {
      headers[key] = value;
    }
  }
  return headers;
}

/** The interceptor that sets them; checks an explicit traceparent now. */
export function traceContext(traceparent?: string, tracestate?: string): Interceptor {
  if (traceparent !== undefined && !TRACEPARENT.test(traceparent)) {
    throw new InvalidArgument(
      Code.InvalidArgument,
      `invalid traceparent ${JSON.stringify(traceparent)}: expected 00-<32 hex>-<16 hex>-<2 hex>`,
    );
  }
  return (next) => async (req) => {
    for (const [key, value] of Object.entries(await traceHeaders(traceparent, tracestate))) {
      req.header.set(key, value);
    }
    return next(req);
  };
}
