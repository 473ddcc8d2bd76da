// W3C trace context on every call: from the active OpenTelemetry context
// (with @opentelemetry/api and an SDK's propagator and context manager, as
// an instrumented application has them), or an explicit traceparent. A
// last interceptor reads what each real call to a live server carried.

import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { after, before, describe, test } from "node:test";

import { ROOT_CONTEXT, context, propagation, trace, TraceFlags } from "@opentelemetry/api";
import { AsyncLocalStorageContextManager } from "@opentelemetry/context-async-hooks";
import { W3CTraceContextPropagator } from "@opentelemetry/core";
import type { Interceptor } from "@connectrpc/connect";

import { InvalidArgument, SandpoolClient } from "@sandpool/client";

import { startServer, type TestServer } from "./helpers/server.js";

describe("trace context", () => {
  let server: TestServer;
  const seen: (string | null)[] = [];
  const record: Interceptor = (next) => (req) => {
    seen.push(req.header.get("traceparent"));
    return next(req);
  };

  before(async () => {
    server = await startServer();
    context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
    propagation.setGlobalPropagator(new W3CTraceContextPropagator());
  });

  after(async () => {
    context.disable();
    propagation.disable();
    await server.stop();
  });

  test("the active span's context goes with each call, none without one", async () => {
    const client = new SandpoolClient({ address: server.address, interceptors: [record] });
    const traceId = randomBytes(16).toString("hex");
    const spanId = randomBytes(8).toString("hex");
    const active = trace.setSpanContext(ROOT_CONTEXT, { traceId, spanId, traceFlags: TraceFlags.SAMPLED });
    seen.length = 0;
    await context.with(active, () => client.listPools());
    await client.listPools();
    assert.deepEqual(seen, [`00-${traceId}-${spanId}-01`, null]);
  });

  test("an explicit traceparent wins and is checked", async () => {
    const traceparent = `00-${randomBytes(16).toString("hex")}-${randomBytes(8).toString("hex")}-01`;
    const client = new SandpoolClient({ address: server.address, traceparent, interceptors: [record] });
    seen.length = 0;
    await client.listPools();
    assert.deepEqual(seen, [traceparent]);
    assert.throws(() => new SandpoolClient({ address: server.address, traceparent: "nope" }), InvalidArgument);
  });
});
