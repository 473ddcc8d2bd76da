// Owned pools: a pool that belongs to its creator, kept alive in the
// background on the KeepAlive stream and deleted when the creator closes it,
// dies or goes silent (the same tests in the Python and Rust suites).

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { once } from "node:events";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { after, before, describe, test } from "node:test";

import { InvalidArgument, LeaseLost, NotFound, OwnedPool, PoolLost, proto, type SandpoolClient } from "@sandpool/client";

import { BlackholeProxy } from "./helpers/proxy.js";
import { PACKAGE_DIR, PYTHON_IMAGE, poolName, startServer, waitFor, type TestServer } from "./helpers/server.js";

/** The owner TTL: renewals every 2/3 s. */
const OWNER_TTL_MS = 2000;
/** How late past the TTL the client may notice a silent connection. */
const MARGIN_MS = 500;

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function spec(name: string, extra: { minPoolSize?: number; maxPoolSize?: number; acquisitionTimeoutMs?: number } = {}) {
  return { name, language: "python", image: PYTHON_IMAGE, minPoolSize: 1, maxPoolSize: 2, ...extra };
}

describe("owned pools", () => {
  let server: TestServer;
  let client: SandpoolClient;
  /** Another client of the same server: it sees the pools from outside. */
  let admin: SandpoolClient;

  const names = async () => (await admin.listPools()).map((p) => p.name);

  before(async () => {
    server = await startServer();
    client = server.client();
    admin = server.client();
  });

  after(async () => {
    await server?.stop();
  });

  test("an owned pool lives while its client renews it; leaving `await using` deletes it at once", async () => {
    const name = poolName("owned");
    let handle: OwnedPool | undefined;
    {
      await using pool = await client.createOwnedPool(spec(name), { ownerTtlMs: OWNER_TTL_MS, waitReady: true, timeoutMs: 60_000 });
      handle = pool;
      assert.equal(pool.name, name);
      assert.equal(pool.pool.spec?.name, name);
      assert.equal(pool.info.phase, "ready");
      assert.notEqual(pool.info.owner, "");
      assert.ok(pool.info.ownerExpireTime !== undefined);
      assert.equal(pool.ownerTtlMs, OWNER_TTL_MS);
      assert.equal(pool.lost, undefined);
      assert.equal(pool.closed, false);
      // The deadline moves on with every renewal, across more than two TTLs.
      const seen = [(await admin.getPool(name)).ownerExpireTime?.getTime() ?? 0];
      const until = performance.now() + 2.5 * OWNER_TTL_MS;
      while (performance.now() < until) {
        await sleep(OWNER_TTL_MS / 2);
        seen.push((await admin.getPool(name)).ownerExpireTime?.getTime() ?? 0);
      }
      for (let i = 1; i < seen.length; i++) {
        assert.ok((seen[i] ?? 0) > (seen[i - 1] ?? 0), `owner_expire_time did not advance: ${seen.join(" ")}`);
      }
      const listed = (await admin.listPools()).find((p) => p.name === name);
      assert.equal(listed?.owner, pool.info.owner);
      assert.ok(listed?.ownerExpireTime !== undefined);
      assert.equal(pool.lost, undefined);
      assert.ok(pool.renewals >= 6, `${pool.renewals} renewals`);
      {
        await using session = await pool.acquire({ ttlMs: 5000 });
        assert.equal((await session.runCollect("print('in an owned pool')")).stdout, "in an owned pool\n");
      }
      assert.equal((await pool.get()).phase, "ready");
      assert.equal((await pool.stats()).maxSize, 2);
    }
    // Leaving the block deleted it at once: no new lease, gone as soon as its containers are.
    assert.equal(handle.closed, true);
    const phase = await admin.getPool(name).then(
      (p) => p.phase,
      (e: unknown) => (e instanceof NotFound ? "gone" : Promise.reject(e)),
    );
    assert.ok(phase === "draining" || phase === "gone", phase);
    await waitFor("the deleted pool to be gone", async () => !(await names()).includes(name), 10_000);
    const err = await handle.acquire().catch((e: unknown) => e);
    assert.ok(err instanceof PoolLost, String(err));
    assert.equal(err.pool, name);
    assert.match(err.reason, /deleted by this client/);
    assert.deepEqual(await handle.delete(), { busyRemaining: 0 }); // idempotent
  });

  test("a pool created without an owner TTL has no owner deadline", async () => {
    const name = poolName("plain");
    const created = await client.createPool(spec(name, { minPoolSize: 0, maxPoolSize: 1 }));
    try {
      assert.notEqual(created.owner, "");
      assert.equal(created.ownerExpireTime, undefined);
      await sleep(1000);
      assert.ok((await names()).includes(name));
    } finally {
      await client.deletePool(name, { wait: true, timeoutMs: 60_000 });
    }
  });

  test("an owner TTL out of range is refused", async () => {
    const name = poolName("badttl");
    const err = await client.createOwnedPool(spec(name), { ownerTtlMs: 500 }).catch((e: unknown) => e);
    assert.ok(err instanceof InvalidArgument, String(err));
    assert.equal(err.field, "owner_ttl");
    assert.ok(!(await names()).includes(name));
  });

  test("a pool deleted behind its owner's back is lost with NOT_FOUND", async () => {
    const name = poolName("behind");
    const pool = await client.createOwnedPool(spec(name, { minPoolSize: 0, maxPoolSize: 1 }), { ownerTtlMs: OWNER_TTL_MS });
    await admin.deletePool(name, { wait: true, timeoutMs: 30_000 });
    await waitFor("the keepalive to hear the pool is gone", () => pool.lost !== undefined, OWNER_TTL_MS / 3 + 2 * MARGIN_MS, 20);
    assert.ok(pool.lost?.startsWith("the server answered the keepalive with NOT_FOUND"), pool.lost);
    const err = await pool.acquire().catch((e: unknown) => e);
    assert.ok(err instanceof PoolLost, String(err));
    assert.equal(err.state, proto.LeaseState.NOT_FOUND);
    const t0 = performance.now();
    assert.deepEqual(await pool.delete(), { busyRemaining: 0 }); // gone already: nothing to send
    assert.ok(performance.now() - t0 < MARGIN_MS);
  });

  test("a client process killed with SIGKILL: its pool is gone within the owner TTL + 2 s, leases on it end", async () => {
    const name = poolName("killed");
    const proc = spawn(process.execPath, [join(PACKAGE_DIR, "build/test/fixtures/hold-owned-pool.js"), name, String(OWNER_TTL_MS)], {
      env: { ...process.env, SANDPOOL_ADDR: server.address },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let stderr = "";
    proc.stderr.on("data", (d: Buffer) => (stderr += d.toString()));
    const exit = once(proc, "exit");
    let session;
    try {
      const lines = createInterface({ input: proc.stdout })[Symbol.asyncIterator]();
      const line = await lines.next();
      assert.ok(line.done !== true, `the child printed nothing; stderr:\n${stderr}`);
      const held = JSON.parse(line.value as string) as { pool: string; owner: string };
      assert.equal(held.pool, name);
      const info = await admin.getPool(name);
      assert.equal(info.owner, held.owner);
      assert.ok(info.ownerExpireTime !== undefined);
      session = await admin.acquire(name, { ttlMs: 3000 });
      assert.equal((await session.runCollect("print('held')")).stdout, "held\n");
      await sleep(OWNER_TTL_MS + 500); // the child's keepalive holds the pool past its TTL
      assert.ok((await names()).includes(name));
      assert.equal(session.lost, undefined);
    } finally {
      proc.kill("SIGKILL");
    }
    await exit;
    const killedAt = performance.now();
    await waitFor("the server to delete the dead client's pool", async () => !(await names()).includes(name), OWNER_TTL_MS + 2000);
    assert.ok(performance.now() - killedAt <= OWNER_TTL_MS + 2000);
    // The lease on it ended with a typed reason.
    await waitFor("the lease to be lost", () => session.lost !== undefined, 5000);
    assert.match(session.lost ?? "", /POOL_DELETED/);
    const lost = await session.runCollect("print(1)").catch((e: unknown) => e);
    assert.ok(lost instanceof LeaseLost, String(lost));
    assert.equal(lost.state, proto.LeaseState.POOL_DELETED);
    await session.release();
    // The server serves on.
    await using other = await client.createOwnedPool(spec(poolName("after"), { minPoolSize: 0, maxPoolSize: 1 }), {
      ownerTtlMs: OWNER_TTL_MS,
    });
    await using s = await other.acquire();
    assert.equal((await s.runCollect("print('still serving')")).stdout, "still serving\n");
  });

  test("a silent connection loses the owned pool within its TTL; calls in flight end with PoolLost", async () => {
    const proxy = await BlackholeProxy.start(server.address);
    try {
      const viaProxy = server.client({ address: proxy.address, timeoutMs: OWNER_TTL_MS + 1000 });
      const name = poolName("silent");
      const pool = await viaProxy.createOwnedPool(spec(name, { minPoolSize: 1, maxPoolSize: 1, acquisitionTimeoutMs: 60_000 }), {
        ownerTtlMs: OWNER_TTL_MS,
        waitReady: true,
        timeoutMs: 60_000,
      });
      // Renewals at about TTL/3: six in two TTLs (some ran while the pool warmed up).
      const before = pool.renewals;
      await sleep(2 * OWNER_TTL_MS);
      const renewed = pool.renewals - before;
      assert.ok(renewed >= 5 && renewed <= 7, `${renewed} renewals`);
      assert.equal(pool.lost, undefined);
      // Another client holds the only container, on a connection of its own.
      const held = await admin.acquire(name, { ttlMs: 3000 });

      // An acquire waiting for that container when the connection goes silent.
      const waiting = pool.acquire({ waitMs: 60_000 }).catch((e: unknown) => e);
      await sleep(300);
      proxy.blackhole();
      const silentAt = performance.now();
      const renewals = pool.renewals;
      await waitFor("the owner to give up on its pool", () => pool.lost !== undefined, OWNER_TTL_MS + 2 * MARGIN_MS, 20);
      const noticed = performance.now() - silentAt;
      assert.ok(noticed <= OWNER_TTL_MS + MARGIN_MS, `noticed ${Math.round(noticed)} ms after the connection went silent`);
      assert.match(pool.lost ?? "", /keepalive failed for longer than the 2s owner TTL/);
      assert.equal(pool.renewals, renewals);
      // The call in flight ends with the loss, not at its deadline.
      const cut = await Promise.race([waiting, sleep(MARGIN_MS).then(() => "still waiting")]);
      assert.ok(cut instanceof PoolLost, String(cut));
      assert.equal(cut.pool, name);
      assert.equal(cut.state, undefined);

      // Every call rejects with PoolLost at once, without a round trip.
      const t0 = performance.now();
      const lost = await pool.acquire().catch((e: unknown) => e);
      assert.ok(lost instanceof PoolLost, String(lost));
      assert.equal(lost.reason, pool.lost);
      await assert.rejects(pool.stats(), PoolLost);
      assert.deepEqual(await pool.delete(), { busyRemaining: 0 }); // lost: nothing to send
      assert.ok(performance.now() - t0 < MARGIN_MS);

      // The server heard no keepalive either: it deleted the pool, and the
      // lease on it ended with a typed reason.
      await waitFor("the server to delete the silent owner's pool", async () => !(await names()).includes(name), 4000);
      await waitFor("the lease on it to be lost", () => held.lost !== undefined, 3000);
      const ended = await held.runCollect("print(1)").catch((e: unknown) => e);
      assert.ok(ended instanceof LeaseLost, String(ended));
      assert.equal(ended.state, proto.LeaseState.POOL_DELETED);
      await held.release();
    } finally {
      await proxy.close();
    }
  });
});
