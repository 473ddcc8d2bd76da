// Streaming: events arrive as the program produces them, not at the end.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import type { RunEvent, SandpoolClient, Session } from "@sandpool/client";

import { PYTHON_IMAGE, poolName, startServer, waitFor, type TestServer } from "./helpers/server.js";

describe("streaming", () => {
  let server: TestServer;
  let client: SandpoolClient;
  let session: Session;
  const pool = poolName("stream");

  before(async () => {
    server = await startServer();
    client = server.client();
    await client.createPool(
      { name: pool, language: "python", image: PYTHON_IMAGE, minPoolSize: 1, maxPoolSize: 1 },
      { waitReady: true, timeoutMs: 60_000 },
    );
    session = await client.acquire(pool);
  });

  after(async () => {
    await session?.release();
    await server?.stop();
  });

  test("stdout and stderr chunks arrive before the program ends", async () => {
    const code = [
      "import sys, time",
      "for i in range(3):",
      "    print(f'tick {i}', flush=True)",
      "    print(f'tock {i}', file=sys.stderr, flush=True)",
      "    time.sleep(0.6)",
      "print('end', flush=True)",
    ].join("\n");
    const t0 = Date.now();
    const arrivals: { e: RunEvent; at: number }[] = [];
    for await (const e of session.run(code)) {
      arrivals.push({ e, at: Date.now() - t0 });
    }
    const events = arrivals.map((a) => a.e);
    assert.equal(events[0]?.type, "started");
    assert.equal(events.at(-1)?.type, "exit");
    assert.equal(events.filter((e) => e.type === "started").length, 1);
    assert.equal(events.filter((e) => e.type === "exit").length, 1);
    // Sequence numbers count up from 1 without gaps.
    assert.deepEqual(
      events.map((e) => e.seq),
      events.map((_, i) => i + 1),
    );

    const firstOut = arrivals.find((a) => a.e.type === "stdout");
    const firstErr = arrivals.find((a) => a.e.type === "stderr");
    const exit = arrivals.at(-1);
    assert.ok(firstOut && firstErr && exit);
    // The program runs for at least 1.8 s; its first line must reach us well
    // before its exit does.
    assert.ok(
      exit.at - firstOut.at >= 1000,
      `first stdout at ${firstOut.at} ms, exit at ${exit.at} ms: output was not streamed`,
    );
    assert.ok(exit.at - firstErr.at >= 1000, `first stderr at ${firstErr.at} ms, exit at ${exit.at} ms`);

    const text = (kind: "stdout" | "stderr") =>
      events.map((e) => (e.type === kind ? e.text : "")).join("");
    assert.equal(text("stdout"), "tick 0\ntick 1\ntick 2\nend\n");
    assert.equal(text("stderr"), "tock 0\ntock 1\ntock 2\n");
    const last = events.at(-1);
    assert.ok(last?.type === "exit");
    assert.equal(last.exitCode, 0);
    assert.equal(last.endReason, "exited");
    assert.equal(last.stdoutBytes, 25);
    assert.equal(last.stderrBytes, 21);
    assert.ok(last.durationMs >= 1800, `duration ${last.durationMs}`);
  });

  test("multi-byte characters split across chunks decode whole", async () => {
    // Write the bytes of "é€" one at a time, flushing each.
    const code =
      "import sys, time\nfor b in 'é€'.encode():\n    sys.stdout.buffer.write(bytes([b])); sys.stdout.flush(); time.sleep(0.05)";
    let text = "";
    let chunks = 0;
    for await (const e of session.run(code)) {
      if (e.type === "stdout") {
        text += e.text;
        chunks += 1;
      }
    }
    assert.equal(text, "é€");
    assert.ok(chunks >= 2, `several chunks (${chunks})`);
  });

  test("leaving the loop early kills the run; the session stays usable", async () => {
    const t0 = Date.now();
    for await (const e of session.run("import time\nprint('first', flush=True)\ntime.sleep(60)")) {
      if (e.type === "stdout") {
        break;
      }
    }
    assert.ok(Date.now() - t0 < 10_000);
    // The dropped run is killed by the server (asynchronously): poll.
    await waitFor(
      "the dropped run's process to be gone",
      async () => (await session.shell("ps -eo args | grep -c '[t]ime.sleep(60)' || true")).stdout.trim() === "0",
      10_000,
      200,
    );
    assert.equal((await session.runCollect("print('next')")).stdout, "next\n");
  });

  test("output beyond the cap is cut and flagged", async () => {
    const r = await session.runCollect("import sys\nsys.stdout.write('x' * 100000)", { outputLimitBytes: 1000 });
    assert.equal(r.truncated, true);
    assert.ok(r.stdoutBytes.length <= 1000, `kept ${r.stdoutBytes.length} bytes`);
  });
});
