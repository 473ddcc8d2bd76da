// Interactive runs (session.interact) against a live server: input written
// while the program runs, end of input, signals, a terminal with its size,
// resizes and Ctrl-C, and a bad request refused with INVALID_ARGUMENT.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import { InvalidArgument, type RunEvent, type SandpoolClient, type Session } from "@sandpool/client";

import { PYTHON_IMAGE, poolName, startServer, type TestServer } from "./helpers/server.js";

/**
 * Reads events until the run's stdout (with a terminal, the one stream) holds
 * `needle`. Stderr is kept apart: without a terminal the two are separate
 * pipes, and how their pieces interleave is up to the scheduler (a REPL's
 * prompt on stderr can land inside a line of stdout).
 */
async function readUntil(events: AsyncIterator<RunEvent>, seen: { text: string }, needle: string): Promise<void> {
  const deadline = Date.now() + 20_000;
  let stderr = "";
  while (!seen.text.includes(needle)) {
    const said = `${JSON.stringify(seen.text)} (stderr ${JSON.stringify(stderr)})`;
    assert.ok(Date.now() < deadline, `${JSON.stringify(needle)} did not come; the run printed ${said}`);
    const next = await events.next();
    assert.ok(!next.done, `the events ended before ${JSON.stringify(needle)}: ${said}`);
    const e = next.value;
    assert.notEqual(e.type, "exit", `the run ended before ${JSON.stringify(needle)}: ${said}`);
    if (e.type === "stdout") {
      seen.text += e.text;
    } else if (e.type === "stderr") {
      stderr += e.text;
    }
  }
}

async function exitOf(events: AsyncIterator<RunEvent>): Promise<Extract<RunEvent, { type: "exit" }>> {
  for (;;) {
    const next = await events.next();
    assert.ok(!next.done, "no exit event");
    if (next.value.type === "exit") {
      return next.value;
    }
  }
}

describe("interactive runs", () => {
  let server: TestServer;
  let client: SandpoolClient;
  let session: Session;
  const pool = poolName("interact");

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

  test("a REPL converses, then ends at end of input", async () => {
    const run = session.interact({ argv: ["python3", "-u", "-i", "-q"] }, { timeoutMs: 60_000 });
    // Writes before the events are read are queued, in order.
    await run.write("x = 21\n");
    await run.write(new TextEncoder().encode("print('answer', x * 2)\n"));
    const events = run[Symbol.asyncIterator]();
    const seen = { text: "" };
    await readUntil(events, seen, "answer 42");
    await run.closeStdin();
    const exit = await exitOf(events);
    assert.equal(exit.exitCode, 0);
    assert.equal(exit.endReason, "exited");
  });

  test("a terminal has its size, follows resizes, and Ctrl-C interrupts its foreground job", async () => {
    const run = session.interact({ argv: ["bash", "--norc", "--noprofile", "-i"] }, { terminal: { rows: 24, columns: 80 }, timeoutMs: 60_000 });
    const events = run[Symbol.asyncIterator]();
    const seen = { text: "" };
    await run.write("stty size\r");
    await readUntil(events, seen, "24 80");
    await run.resize(30, 100);
    await run.write("stty size\r");
    await readUntil(events, seen, "30 100");
    await run.write("sleep 50; echo slept\r");
    await new Promise((r) => setTimeout(r, 500));
    const t0 = Date.now();
    await run.write("\x03");
    await run.write("echo after-$((6 * 7))\r");
    await readUntil(events, seen, "after-42");
    assert.ok(Date.now() - t0 < 10_000, `Ctrl-C took ${Date.now() - t0} ms`);
    assert.ok(!seen.text.includes("\nslept\r\n"), seen.text);
    await run.write("exit 5\r");
    const exit = await exitOf(events);
    assert.equal(exit.exitCode, 5);
    assert.equal(exit.endReason, "exited");
  });

  test("signals reach the run; a bad one ends the call with INVALID_ARGUMENT", async () => {
    const run = session.interact({ argv: ["cat"] }, { timeoutMs: 60_000 });
    const events = run[Symbol.asyncIterator]();
    const seen = { text: "" };
    await run.write("ping\n");
    await readUntil(events, seen, "ping\n");
    await run.signal("SIGTERM");
    const exit = await exitOf(events);
    assert.equal(exit.endReason, "signaled");
    assert.equal(exit.exitCode, 143);

    const bad = session.interact({ argv: ["cat"] }, { timeoutMs: 60_000 });
    await bad.signal(99);
    await assert.rejects(bad.collect(), (e: unknown) => e instanceof InvalidArgument && /signal/.test(e.message));
    // Once the call is over, sending is refused.
    await assert.rejects(bad.write("late"), /over/);

    const after = await session.runCollect("print('still')");
    assert.equal(after.stdout, "still\n");
  });
});
