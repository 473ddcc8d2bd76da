// The keepalive contract, tested the same way in the Python and Rust
// suites: renewals at a third of the TTL; on a connection that goes silent
// (a proxy that stops forwarding but closes nothing) the lease is lost within
// the TTL, calls reject with LeaseLost at once and none hangs; a keepalive
// answered with a state other than ACTIVE loses the lease with that state.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import { DeadlineExceeded, LeaseLost, Unavailable, proto } from "@sandpool/client";

import { BlackholeProxy } from "./helpers/proxy.js";
import { PYTHON_IMAGE, poolName, startServer, waitFor, type TestServer } from "./helpers/server.js";

/** The lease TTL: renewals every second. */
const TTL_MS = 3000;
/** How late past the TTL the client may notice a silent connection. */
const MARGIN_MS = 500;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe("keepalive contract", () => {
  let server: TestServer;
  let proxy: BlackholeProxy;
  const pool = poolName("keepalive");

  before(async () => {
    server = await startServer();
    proxy = await BlackholeProxy.start(server.address);
    await server
      .client()
      .createPool(
        { name: pool, language: "python", image: PYTHON_IMAGE, minPoolSize: 1, maxPoolSize: 2 },
        { waitReady: true, timeoutMs: 60_000 },
      );
  });

  after(async () => {
    await proxy?.close();
    await server?.stop();
  });

  test("renewals at a third of the TTL; a silent connection loses the lease within it", async () => {
    const client = server.client({ address: proxy.address, timeoutMs: TTL_MS });
    const session = await client.acquire(pool, { ttlMs: TTL_MS });
    assert.equal(session.lease.ttlMs, TTL_MS);
    // Renewals at about TTL/3: six in two TTLs.
    await sleep(2 * TTL_MS);
    assert.ok(session.renewals >= 5 && session.renewals <= 7, `${session.renewals} renewals`);
    assert.equal(session.lost, undefined);
    assert.equal((await session.runCollect("print('held')")).stdout, "held\n");

    // A run in flight when the connection goes silent.
    const events = session.run("import time\nprint('running', flush=True)\ntime.sleep(120)")[Symbol.asyncIterator]();
    for (;;) {
      const e = await events.next();
      if (e.done === true || e.value.type === "stdout") {
        break;
      }
    }
    proxy.blackhole();
    const silentAt = performance.now();
    const renewals = session.renewals;
    await waitFor("the session to give up on its lease", () => session.lost !== undefined, TTL_MS + 2 * MARGIN_MS, 20);
    const noticed = performance.now() - silentAt;
    assert.ok(noticed <= TTL_MS + MARGIN_MS, `noticed ${Math.round(noticed)} ms after the connection went silent`);
    assert.match(session.lost ?? "", /keepalive failed for longer than the 3s TTL/);
    assert.equal(session.renewals, renewals);

    // The run in flight ends with the loss, not at its deadline.
    let t0 = performance.now();
    const cut = await (async () => {
      for (;;) {
        if ((await events.next()).done === true) {
          return undefined;
        }
      }
    })().catch((e: unknown) => e);
    assert.ok(cut instanceof LeaseLost, String(cut));
    assert.ok(performance.now() - t0 < MARGIN_MS);
    assert.equal(cut.leaseId, session.leaseId);
    assert.equal(cut.state, undefined);

    // Every call rejects with LeaseLost at once, without a round trip.
    t0 = performance.now();
    const lost = await session.runCollect("print(1)").catch((e: unknown) => e);
    assert.ok(lost instanceof LeaseLost, String(lost));
    assert.ok(performance.now() - t0 < MARGIN_MS);
    assert.equal(lost.reason, session.lost);
    assert.equal(lost.state, undefined);
    await assert.rejects(session.upload("/sandbox/x", "x"), LeaseLost);

    // Telling the server is bounded by the client's deadline.
    t0 = performance.now();
    await assert.rejects(session.release(), (e) => e instanceof DeadlineExceeded || e instanceof Unavailable);
    assert.ok(performance.now() - t0 < TTL_MS + MARGIN_MS);
  });

  test("a keepalive answered with another state loses the lease with that state", async () => {
    const client = server.client();
    await using session = await client.acquire(pool, { ttlMs: TTL_MS });
    // Another holder of the lease id ends it; the next renewal hears so.
    await client.sessions.release({ leaseId: session.leaseId });
    await waitFor("the keepalive to hear the release", () => session.lost !== undefined, TTL_MS / 3 + 2 * MARGIN_MS, 20);
    assert.ok(session.lost?.startsWith("the server answered the keepalive with RELEASED"), session.lost);
    const lost = await session.runCollect("print(1)").catch((e: unknown) => e);
    assert.ok(lost instanceof LeaseLost, String(lost));
    assert.equal(lost.state, proto.LeaseState.RELEASED);
    assert.equal(lost.reason, session.lost);
  });

  test("a lease that waited longer than its TTL for a container is held on arrival", async () => {
    const client = server.client();
    const single = poolName("keepalive-wait");
    await client.createPool(
      {
        name: single,
        language: "python",
        image: PYTHON_IMAGE,
        minPoolSize: 1,
        maxPoolSize: 1,
        exhaustionStrategy: "wait",
        acquisitionTimeoutMs: 30_000,
      },
      { waitReady: true, timeoutMs: 60_000 },
    );
    try {
      const ttlMs = 1000;
      const holder = await client.acquire(single);
      // The only container is held: this Acquire waits 2.5 TTLs.
      const behind = client.acquire(single, { ttlMs, waitMs: 20_000 });
      await sleep(2500);
      await holder.release();
      await using session = await behind;
      // Its TTL runs from the grant, not from the Acquire sent 2.5 TTLs ago.
      assert.equal(session.lost, undefined);
      assert.equal((await session.runCollect("print('held')")).stdout, "held\n");
      await sleep(2 * ttlMs);
      assert.equal(session.lost, undefined);
      assert.ok(session.renewals >= 3, `${session.renewals} renewals`);
    } finally {
      await client.deletePool(single);
    }
  });
});
