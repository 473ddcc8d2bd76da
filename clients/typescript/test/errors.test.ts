// Error mapping: gRPC status codes become the client's error classes, with
// the server's rich details (field, retry delay).

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import {
  AlreadyExists,
  Cancelled,
  Code,
  DeadlineExceeded,
  FailedPrecondition,
  InvalidArgument,
  LeaseLost,
  NotFound,
  PoolExhausted,
  SandpoolClient,
  SandpoolError,
  Unauthenticated,
  Unavailable,
} from "@sandpool/client";

import { PYTHON_IMAGE, poolName, startServer, type TestServer } from "./helpers/server.js";

describe("error mapping", () => {
  let server: TestServer;
  let client: SandpoolClient;

  before(async () => {
    server = await startServer();
    client = server.client();
  });

  after(async () => {
    await server?.stop();
  });

  test("an unknown pool is NotFound", async () => {
    const err = await client.acquire("no-such-pool").catch((e: unknown) => e);
    assert.ok(err instanceof NotFound, String(err));
    assert.ok(err instanceof SandpoolError);
    assert.equal(err.code, Code.NotFound);
    assert.equal(err.codeName, "NOT_FOUND");
    assert.match(err.message, /no-such-pool/);
    await assert.rejects(client.getStats("no-such-pool"), NotFound);
    await assert.rejects(client.deletePool("no-such-pool"), NotFound);
  });

  test("FAIL_FAST on an exhausted pool is PoolExhausted at once, with a retry hint", async () => {
    const pool = poolName("ff");
    await client.createPool(
      { name: pool, language: "python", image: PYTHON_IMAGE, minPoolSize: 1, maxPoolSize: 1, exhaustionStrategy: "fail_fast" },
      { waitReady: true, timeoutMs: 60_000 },
    );
    const held = await client.acquire(pool);
    try {
      const t0 = Date.now();
      const err = await client.acquire(pool, { waitMs: 20_000 }).catch((e: unknown) => e);
      assert.ok(err instanceof PoolExhausted, String(err));
      assert.equal(err.code, Code.ResourceExhausted);
      assert.ok(Date.now() - t0 < 2000, "answered at once");
      assert.equal(err.retryAfterMs, 1000);
      const stats = await client.getStats(pool);
      assert.equal(stats.counters.failFastRefusals, 1);
      assert.equal(stats.stateCounts.busy, 1);
    } finally {
      await held.release();
    }
    await client.deletePool(pool, { wait: true, timeoutMs: 60_000 });
  });

  test("WAIT gives up with PoolExhausted at the acquisition timeout or the call's deadline", async () => {
    const pool = poolName("wait");
    await client.createPool(
      { name: pool, language: "python", image: PYTHON_IMAGE, minPoolSize: 1, maxPoolSize: 1, acquisitionTimeoutMs: 600 },
      { waitReady: true, timeoutMs: 60_000 },
    );
    const held = await client.acquire(pool);
    try {
      const t0 = Date.now();
      await assert.rejects(client.acquire(pool, { waitMs: 20_000 }), PoolExhausted);
      const waited = Date.now() - t0;
      assert.ok(waited >= 500 && waited < 5000, `gave up after the 600 ms acquisition timeout (${waited} ms)`);
    } finally {
      await held.release();
    }
    await client.deletePool(pool);
    // A call deadline shorter than the pool's timeout bounds the wait too.
    const pool2 = poolName("wait2");
    await client.createPool(
      { name: pool2, language: "python", image: PYTHON_IMAGE, minPoolSize: 1, maxPoolSize: 1, acquisitionTimeoutMs: 30_000 },
      { waitReady: true, timeoutMs: 60_000 },
    );
    const held2 = await client.acquire(pool2);
    try {
      const t0 = Date.now();
      await assert.rejects(client.acquire(pool2, { waitMs: 800 }), PoolExhausted);
      const waited = Date.now() - t0;
      assert.ok(waited >= 600 && waited < 5000, `gave up at the 800 ms deadline (${waited} ms)`);
      const stats = await client.getStats(pool2);
      assert.equal(stats.counters.waitTimeouts, 1);
    } finally {
      await held2.release();
    }
    await client.deletePool(pool2);
  });

  test("TEMPORARY starts an extra container outside the pool", async () => {
    const pool = poolName("tmp");
    await client.createPool(
      { name: pool, language: "python", image: PYTHON_IMAGE, minPoolSize: 1, maxPoolSize: 1, exhaustionStrategy: "temporary" },
      { waitReady: true, timeoutMs: 60_000 },
    );
    await using first = await client.acquire(pool);
    await using extra = await client.acquire(pool, { waitMs: 60_000 });
    assert.equal(first.lease.temporary, false);
    assert.equal(extra.lease.temporary, true);
    assert.notEqual(extra.containerId, first.containerId);
    assert.equal((await extra.runCollect("print('temp')")).stdout, "temp\n");
    const stats = await client.getStats(pool);
    assert.equal(stats.temporaryContainers, 1);
    assert.equal(stats.counters.temporaries, 1);
  });

  test("an invalid pool spec is InvalidArgument naming the field", async () => {
    const cases: [string, Parameters<SandpoolClient["createPool"]>[0]][] = [
      ["config.min_pool_size", { name: poolName("bad"), language: "python", minPoolSize: 5, maxPoolSize: 2 }],
      ["config.max_pool_size", { name: poolName("bad"), language: "python", maxPoolSize: 0 }],
      ["name", { name: "Not A Name!", language: "python" }],
      ["language", { name: poolName("bad"), language: "cobol" }],
      ["runtime.user", { name: poolName("bad"), language: "python", runtime: { user: "0:0" } }],
    ];
    for (const [field, spec] of cases) {
      const err = await client.createPool(spec).catch((e: unknown) => e);
      assert.ok(err instanceof InvalidArgument, `${field}: ${String(err)}`);
      assert.equal(err.code, Code.InvalidArgument);
      assert.equal(err.field, field);
      assert.equal(err.details.fieldViolations[0]?.field, field);
    }
    const names = (await client.listPools()).map((p) => p.name);
    assert.ok(!names.some((n) => n.startsWith("bad-")), `no invalid pool was created: ${names.join(", ")}`);
  });

  test("a taken pool name is AlreadyExists", async () => {
    const pool = poolName("dup");
    await client.createPool({ name: pool, language: "python", image: PYTHON_IMAGE, minPoolSize: 0, maxPoolSize: 1 });
    await assert.rejects(client.createPool({ name: pool, language: "python" }), AlreadyExists);
    await client.deletePool(pool, { wait: true });
  });

  test("a call past its deadline is DeadlineExceeded; the session survives it", async () => {
    const pool = poolName("dl");
    await client.createPool(
      { name: pool, language: "python", image: PYTHON_IMAGE, minPoolSize: 1, maxPoolSize: 1 },
      { waitReady: true, timeoutMs: 60_000 },
    );
    await using session = await client.acquire(pool);
    const t0 = Date.now();
    await assert.rejects(session.runCollect("import time\ntime.sleep(20)", { deadlineMs: 700 }), DeadlineExceeded);
    assert.ok(Date.now() - t0 < 5000);
    assert.equal(session.lost, undefined);
    assert.equal((await session.runCollect("print('ok')")).stdout, "ok\n");
  });

  test("a refused operation on a live lease is FailedPrecondition, not LeaseLost", async () => {
    const pool = poolName("inst");
    await client.createPool(
      { name: pool, language: "python", image: PYTHON_IMAGE, minPoolSize: 1, maxPoolSize: 1 },
      { waitReady: true, timeoutMs: 60_000 },
    );
    await using session = await client.acquire(pool);
    // The pool does not allow installs over the network on a lease.
    const err = await session.installLibraries(["left-pad"]).catch((e: unknown) => e);
    assert.ok(err instanceof FailedPrecondition, String(err));
    assert.ok(!(err instanceof LeaseLost));
    assert.match(err.message, /lease_installs/);
    assert.equal(session.lost, undefined);
    assert.equal((await session.runCollect("print('usable')")).stdout, "usable\n");
  });

  test("an aborted call is Cancelled", async () => {
    const abort = new AbortController();
    abort.abort();
    await assert.rejects(client.acquire("whatever", { signal: abort.signal }), Cancelled);
  });

  test("a server that cannot be reached is Unavailable", async () => {
    // A port nobody listens on: the test server's, after it is gone, is not
    // available here; port 1 is reserved and closed.
    const nowhere = new SandpoolClient({ address: "127.0.0.1:1", timeoutMs: 5000 });
    await assert.rejects(nowhere.listPools(), Unavailable);
  });

  test("calls on a released session are LeaseLost without reaching the server", async () => {
    const pool = poolName("rel");
    await client.createPool(
      { name: pool, language: "python", image: PYTHON_IMAGE, minPoolSize: 1, maxPoolSize: 1 },
      { waitReady: true, timeoutMs: 60_000 },
    );
    const session = await client.acquire(pool);
    await session.release();
    for (const call of [
      () => session.runCollect("print(1)"),
      () => session.upload("/tmp/x", "x"),
      () => session.download("/tmp/x"),
      () => session.listArtifacts(),
      () => session.cancel("0000000000000000"),
    ]) {
      const err = await call().catch((e: unknown) => e);
      assert.ok(err instanceof LeaseLost, String(err));
      assert.equal(err.leaseId, session.leaseId);
    }
  });
});

describe("authentication", () => {
  let server: TestServer;

  before(async () => {
    server = await startServer({ tokens: ["s3cret-token"] });
  });

  after(async () => {
    await server?.stop();
  });

  test("no token or a wrong one is Unauthenticated; the right one works", async () => {
    await assert.rejects(server.client({ token: "" }).listPools(), Unauthenticated);
    const err = await server.client({ token: "wrong" }).listPools().catch((e: unknown) => e);
    assert.ok(err instanceof Unauthenticated, String(err));
    assert.match(err.message, /not accepted/);
    assert.ok(Array.isArray(await server.client({ token: "s3cret-token" }).listPools()));
  });
});
