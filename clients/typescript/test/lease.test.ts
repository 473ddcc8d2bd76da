// Leases: background keepalive, LeaseLost when the lease is gone, release by
// `await using` and try/finally, and the server reclaiming the lease of a
// client process killed with SIGKILL.

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { once } from "node:events";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { after, before, describe, test } from "node:test";

import { LeaseLost, proto, type SandpoolClient } from "@sandpool/client";

import { PACKAGE_DIR, PYTHON_IMAGE, poolName, startServer, waitFor, type TestServer } from "./helpers/server.js";

const FIXTURES = join(PACKAGE_DIR, "build/test/fixtures");

const unhandled: unknown[] = [];
process.on("unhandledRejection", (reason) => {
  unhandled.push(reason);
});

/** Blocks the event loop (no timer, no keepalive runs) for `ms`. */
function blockEventLoop(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Runs a fixture as a child node process; resolves with its output lines, exit and timing. */
function child(server: TestServer, script: string, args: string[]) {
  const proc = spawn(process.execPath, [join(FIXTURES, script), ...args], {
    env: { ...process.env, SANDPOOL_ADDR: server.address },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stderr = "";
  proc.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
  const lines = createInterface({ input: proc.stdout })[Symbol.asyncIterator]();
  const exit = once(proc, "exit").then(([code, signal]) => ({ code: code as number | null, signal, at: Date.now() }));
  return {
    proc,
    exit,
    stderr: () => stderr,
    async line(): Promise<string> {
      const r = await lines.next();
      if (r.done === true) {
        throw new Error(`child ended before printing a line; stderr:\n${stderr}`);
      }
      return r.value;
    },
  };
}

describe("leases", () => {
  let server: TestServer;
  let client: SandpoolClient;
  const pool = poolName("lease");

  before(async () => {
    server = await startServer();
    client = server.client();
    await client.createPool(
      { name: pool, language: "python", image: PYTHON_IMAGE, minPoolSize: 2, maxPoolSize: 3, defaultLeaseTtlMs: 2000 },
      { waitReady: true, timeoutMs: 60_000 },
    );
  });

  after(async () => {
    await server?.stop();
  });

  test("the keepalive keeps an idle lease alive past 3 TTLs", async () => {
    const session = await client.acquire(pool, { ttlMs: 1500 });
    try {
      assert.equal(session.lease.ttlMs, 1500);
      const expiresFirst = session.lease.expireTime?.getTime() ?? 0;
      await sleep(5000); // > 3 TTLs with nothing but the keepalive
      assert.equal(session.lost, undefined);
      assert.equal((await session.runCollect("print('still mine')")).stdout, "still mine\n");
      const stats = await client.getStats(pool);
      assert.equal(stats.counters.leaseExpirations, 0);
      assert.equal(stats.activeLeases, 1);
      // The server's view: the lease is alive and its deadline moved on.
      const [renewed] = await keepAliveOnce(session.leaseId);
      assert.equal(renewed?.state, proto.LeaseState.ACTIVE);
      assert.ok((renewed?.expireTime?.seconds ?? 0n) * 1000n > BigInt(expiresFirst));
    } finally {
      await session.release();
    }
  });

  /** Sends one keepalive for `leaseId` over a raw stream and returns the answer. */
  async function keepAliveOnce(leaseId: string) {
    const answers = [];
    for await (const a of client.sessions.keepAlive(
      (async function* () {
        yield { leaseId };
      })(),
      { timeoutMs: 5000 },
    )) {
      answers.push(a);
    }
    return answers;
  }

  test("a lease that expired on the server makes the next call reject with LeaseLost", async () => {
    const session = await client.acquire(pool, { ttlMs: 1000 });
    const before = (await client.getStats(pool)).counters.leaseExpirations;
    blockEventLoop(2500); // no keepalive can go out: the server expires the lease
    const err = await session.runCollect("print('too late')").catch((e: unknown) => e);
    assert.ok(err instanceof LeaseLost, String(err));
    assert.equal(err.leaseId, session.leaseId);
    assert.match(err.reason, /expired/);
    assert.match(session.lost ?? "", /expired/);
    // Every later call says so too, without asking the server.
    await assert.rejects(session.listArtifacts(), LeaseLost);
    const stats = await client.getStats(pool);
    assert.equal(stats.counters.leaseExpirations, before + 1);
    // Releasing a lost lease is not an error.
    await session.release();
    const [answer] = await keepAliveOnce(session.leaseId);
    assert.equal(answer?.state, proto.LeaseState.EXPIRED);
  });

  test("keepalive failing for longer than the TTL (server frozen) loses the lease", async () => {
    const session = await client.acquire(pool, { ttlMs: 1500 });
    const t0 = Date.now();
    server.pause();
    try {
      await waitFor("the session to notice", () => session.lost !== undefined, 6000);
    } finally {
      server.resume();
    }
    const noticed = Date.now() - t0;
    assert.ok(noticed >= 1400, `not before the TTL (${noticed} ms)`);
    assert.match(session.lost ?? "", /keepalive failed for longer than the 1.5s TTL/);
    const t1 = Date.now();
    await assert.rejects(session.runCollect("print(1)"), LeaseLost);
    assert.ok(Date.now() - t1 < 500, "rejected without a round trip");
    await session.release();
    // The client recovers once the server is back.
    await using again = await client.acquire(pool, { waitMs: 20_000 });
    assert.equal((await again.runCollect("print('back')")).stdout, "back\n");
  });

  test("`await using` releases the lease when the body throws", async () => {
    let leaseId = "";
    await assert.rejects(
      (async () => {
        await using session = await client.acquire(pool);
        leaseId = session.leaseId;
        assert.equal((await session.runCollect("print(1)")).stdout, "1\n");
        throw new Error("boom");
      })(),
      /boom/,
    );
    // Released by the dispose, not expired: the server says it was already released.
    const r = await client.sessions.release({ leaseId });
    assert.equal(r.previousState, proto.LeaseState.RELEASED);

    let normalId = "";
    {
      await using session = await client.acquire(pool);
      normalId = session.leaseId;
    }
    assert.equal((await client.sessions.release({ leaseId: normalId })).previousState, proto.LeaseState.RELEASED);
  });

  test("release() in finally is idempotent, also concurrently and combined with await using", async () => {
    let leaseId = "";
    {
      await using session = await client.acquire(pool);
      leaseId = session.leaseId;
      try {
        await session.runCollect("print(2)");
      } finally {
        await Promise.all([session.release(), session.release()]);
        await session.release();
      }
      assert.equal(session.released, true);
    }
    assert.equal((await client.sessions.release({ leaseId })).previousState, proto.LeaseState.RELEASED);
    const stats = await client.getStats(pool);
    assert.equal(stats.activeLeases, 0);
  });

  test("a client process killed with SIGKILL: the server frees its lease within TTL + 2 s", async () => {
    const ttl = 2000;
    const c = child(server, "hold-lease.js", [pool]);
    try {
      const held = JSON.parse(await c.line()) as { leaseId: string; containerId: string };
      assert.match(held.leaseId, /^[0-9a-f]{32}$/);
      let stats = await client.getStats(pool);
      assert.equal(stats.activeLeases, 1);
      assert.equal(stats.stateCounts.busy, 1);
      const expiredBefore = stats.counters.leaseExpirations;
      // Longer than the TTL: the child's background keepalive holds the lease.
      await sleep(ttl + 1000);
      stats = await client.getStats(pool);
      assert.equal(stats.activeLeases, 1, "the child's keepalive kept the lease");
      assert.equal(stats.counters.leaseExpirations, expiredBefore);

      c.proc.kill("SIGKILL");
      const killedAt = Date.now();
      await c.exit;
      await waitFor(
        "the lease of the killed client to be freed",
        async () => {
          const s = await client.getStats(pool);
          return s.activeLeases === 0 && s.stateCounts.busy === 0;
        },
        ttl + 4000,
        50,
      );
      const freedAfter = Date.now() - killedAt;
      assert.ok(freedAfter <= ttl + 2000, `freed ${freedAfter} ms after the kill (TTL ${ttl} ms)`);
      stats = await client.getStats(pool);
      assert.equal(stats.counters.leaseExpirations, expiredBefore + 1, "reclaimed by expiry");
      const [answer] = await keepAliveOnce(held.leaseId);
      assert.equal(answer?.state, proto.LeaseState.EXPIRED);
    } finally {
      c.proc.kill("SIGKILL");
    }
  });

  for (const mode of ["release", "await-using", "break", "lost"]) {
    test(`a client process exits on its own after its lease ends (${mode})`, async () => {
      const c = child(server, "exit-check.js", [pool, mode]);
      try {
        const lines: string[] = [];
        for (;;) {
          const line = await c.line();
          lines.push(line);
          if (line === "done") {
            break;
          }
        }
        const doneAt = Date.now();
        const timer = setTimeout(() => c.proc.kill("SIGKILL"), 10_000);
        const exit = await c.exit;
        clearTimeout(timer);
        assert.equal(exit.code, 0, `exit ${exit.code ?? exit.signal}; stderr:\n${c.stderr()}`);
        assert.ok(exit.at - doneAt < 2000, `exited ${exit.at - doneAt} ms after its last statement`);
        assert.deepEqual(lines, mode === "lost" ? ["lost", "done"] : ["alive", "done"]);
      } finally {
        c.proc.kill("SIGKILL");
      }
    });
  }

  test("no dropped or failed keepalive produced an unhandled rejection", () => {
    assert.deepEqual(unhandled, []);
  });
});
