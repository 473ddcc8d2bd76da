// OpenTelemetry end to end from the TypeScript client: a server exporting
// over OTLP/gRPC to the tests' receiver (the workspace's `otlp_receiver`
// binary, real protocol), and Acquire → Run → Release made inside an active
// span of the OpenTelemetry JS SDK. The server's spans join the caller's
// trace under its span, and the program sees its run's span as TRACEPARENT.

import assert from "node:assert/strict";
import { spawn, type ChildProcess } from "node:child_process";
import { once } from "node:events";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { createInterface } from "node:readline";
import { after, before, describe, test } from "node:test";

import { context, propagation } from "@opentelemetry/api";
import { AsyncLocalStorageContextManager } from "@opentelemetry/context-async-hooks";
import { W3CTraceContextPropagator } from "@opentelemetry/core";
import { InMemorySpanExporter, SimpleSpanProcessor, TracerProvider } from "@opentelemetry/sdk-trace";

import type { SandpoolClient } from "@sandpool/client";

import { PYTHON_IMAGE, SERVER_BIN, poolName, startServer, waitFor, type TestServer } from "./helpers/server.js";

/** The receiver: beside the server binary in the workspace build. */
const RECEIVER_BIN = process.env["SANDPOOL_OTLP_RECEIVER_BIN"] ?? join(dirname(SERVER_BIN), "otlp_receiver");
const SERVICE = "sandpool.v1.SessionService";

/** A span as the receiver writes it (ids in hex). */
interface SpanRecord {
  service: string;
  trace_id: string;
  span_id: string;
  parent_span_id: string;
  name: string;
  kind: number;
  attributes: [string, string][];
  events: { name: string; attributes: [string, string][] }[];
}

/** The receiver process; what it got is read from its JSON-lines file. */
class Receiver {
  private constructor(
    private readonly proc: ChildProcess,
    private readonly dir: string,
    private readonly out: string,
    readonly endpoint: string,
  ) {}

  static async start(): Promise<Receiver> {
    if (!existsSync(RECEIVER_BIN)) {
      throw new Error(`${RECEIVER_BIN} is missing: run \`cargo build -p sandpool-tests --bin otlp_receiver\` (test.sh does)`);
    }
    const dir = mkdtempSync(join(tmpdir(), "sandpool-otlp-"));
    const out = join(dir, "otlp.jsonl");
    const proc = spawn(RECEIVER_BIN, [out], { stdio: ["pipe", "pipe", "inherit"] });
    if (proc.stdout === null) {
      throw new Error("the receiver has no stdout");
    }
    const lines = createInterface({ input: proc.stdout });
    const [first] = (await once(lines, "line")) as [string];
    lines.close();
    const [word, endpoint] = first.split(" ");
    if (word !== "listening" || endpoint === undefined) {
      proc.kill("SIGKILL");
      throw new Error(`the receiver said ${JSON.stringify(first)}`);
    }
    return new Receiver(proc, dir, out, endpoint);
  }

  spans(): SpanRecord[] {
    if (!existsSync(this.out)) {
      return [];
    }
    return readFileSync(this.out, "utf8")
      .split("\n")
      .filter((l) => l.trim() !== "")
      .map((l) => JSON.parse(l) as { span?: SpanRecord })
      .flatMap((r) => (r.span === undefined ? [] : [r.span]));
  }

  async stop(): Promise<void> {
    const exited = once(this.proc, "exit");
    this.proc.stdin?.end();
    await exited;
    rmSync(this.dir, { recursive: true, force: true });
  }
}

describe("OpenTelemetry export through the client", () => {
  let receiver: Receiver;
  let server: TestServer;
  let client: SandpoolClient;
  const pool = poolName("otel");
  const exporter = new InMemorySpanExporter();
  const provider = new TracerProvider({ spanProcessors: [new SimpleSpanProcessor({ exporter })] });

  before(async () => {
    receiver = await Receiver.start();
    server = await startServer({
      env: {
        OTEL_EXPORTER_OTLP_ENDPOINT: receiver.endpoint,
        OTEL_SERVICE_NAME: "sandpool-ts-export",
        OTEL_METRIC_EXPORT_INTERVAL: "60000",
      },
    });
    client = server.client();
    await client.createPool(
      { name: pool, language: "python", image: PYTHON_IMAGE, minPoolSize: 1, maxPoolSize: 1 },
      { waitReady: true, timeoutMs: 60_000 },
    );
    // What an instrumented application sets up: a context manager that
    // follows async calls, and the W3C propagator.
    context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
    propagation.setGlobalPropagator(new W3CTraceContextPropagator());
  });

  after(async () => {
    context.disable();
    propagation.disable();
    await provider.shutdown();
    await server?.stop();
    await receiver?.stop();
  });

  test("the server's spans and the program join the caller's active span's trace", async () => {
    const tracer = provider.getTracer("sandpool-client-test");
    const { traceId, spanId, printed } = await tracer.startActiveSpan("agent.tool_call", async (span) => {
      try {
        const session = await client.acquire(pool);
        const result = await session.runCollect("import os\nprint(os.environ.get('TRACEPARENT', 'none'))");
        await session.release();
        assert.equal(result.exitCode, 0, result.stderr);
        return { ...span.spanContext(), printed: result.stdout.trim() };
      } finally {
        span.end();
      }
    });
    // The caller's span is the SDK's own, recorded and ended.
    const mine = exporter.getFinishedSpans().find((s) => s.name === "agent.tool_call");
    assert.equal(mine?.spanContext().traceId, traceId);

    let rpcs = new Map<string, SpanRecord>();
    await waitFor(
      "the server's Acquire, Run and Release spans in the caller's trace",
      () => {
        rpcs = new Map(
          receiver
            .spans()
            .filter((s) => s.trace_id === traceId && s.name.startsWith(`${SERVICE}/`))
            .map((s) => [s.name.slice(SERVICE.length + 1), s]),
        );
        return ["Acquire", "Run", "Release"].every((m) => rpcs.has(m));
      },
      30_000,
      100,
    );
    for (const method of ["Acquire", "Run", "Release"]) {
      const span = rpcs.get(method);
      assert.ok(span);
      assert.equal(span.parent_span_id, spanId, `${method}'s parent is the caller's span`);
      assert.equal(span.kind, 2, `${method} is a server span`);
      assert.equal(span.service, "sandpool-ts-export");
      const attributes = new Map(span.attributes);
      assert.equal(attributes.get("rpc.method"), method);
      assert.equal(attributes.get("rpc.grpc.status_code"), "0");
    }
    // The program continues the trace from its run's span, under Run.
    const runRpc = rpcs.get("Run");
    const run = receiver.spans().find((s) => s.parent_span_id === runRpc?.span_id && s.name === "run");
    assert.ok(run, "a run span under Run");
    assert.equal(run.trace_id, traceId);
    assert.equal(printed, `00-${traceId}-${run.span_id}-01`);
  });
});
