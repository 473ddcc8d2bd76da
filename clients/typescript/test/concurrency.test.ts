// 50 concurrent sessions on a WAIT pool of 5: every one gets a container,
// runs correctly, sees nothing of the previous lease, and no container is
// ever leased twice at once.

import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { after, before, describe, test } from "node:test";

import type { SandpoolClient } from "@sandpool/client";

import { PYTHON_IMAGE, poolName, startServer, type TestServer } from "./helpers/server.js";

const SESSIONS = 50;
const POOL_SIZE = 5;

describe("concurrency", () => {
  let server: TestServer;
  let client: SandpoolClient;
  const pool = poolName("conc");

  before(async () => {
    server = await startServer();
    client = server.client();
    await client.createPool(
      {
        name: pool,
        language: "python",
        image: PYTHON_IMAGE,
        minPoolSize: POOL_SIZE,
        maxPoolSize: POOL_SIZE,
        exhaustionStrategy: "wait",
        acquisitionTimeoutMs: 120_000,
      },
      { waitReady: true, timeoutMs: 60_000 },
    );
  });

  after(async () => {
    await server?.stop();
  });

  test(`${SESSIONS} concurrent sessions on a pool of ${POOL_SIZE}`, async (t) => {
    const leased = new Set<string>();
    const containers = new Set<string>();
    let maxAtOnce = 0;
    const doubleLeases: string[] = [];
    // Each run checks that the workspace holds nothing of an earlier lease,
    // leaves a marker for the next one to (not) find, and echoes its token.
    const code = (token: string) =>
      [
        "import os",
        "stale = os.path.exists('/sandbox/marker') or os.path.exists('/tmp/marker')",
        "open('/sandbox/marker', 'w').write('x')",
        "open('/tmp/marker', 'w').write('x')",
        `print('${token}', stale)`,
      ].join("\n");

    const t0 = Date.now();
    const results = await Promise.all(
      Array.from({ length: SESSIONS }, async (_, i) => {
        const token = `task-${i}-${randomUUID()}`;
        await using session = await client.acquire(pool, { waitMs: 120_000 });
        const id = session.containerId;
        if (leased.has(id)) {
          doubleLeases.push(id);
        }
        leased.add(id);
        containers.add(id);
        maxAtOnce = Math.max(maxAtOnce, leased.size);
        try {
          const r = await session.runCollect(code(token));
          return { token, stdout: r.stdout, exitCode: r.exitCode };
        } finally {
          // Out of the set before the release lets anyone else have it.
          leased.delete(id);
        }
      }),
    );
    const elapsed = Date.now() - t0;
    t.diagnostic(`${SESSIONS} sessions over ${containers.size} containers in ${elapsed} ms`);

    assert.deepEqual(doubleLeases, [], "no container leased twice at once");
    assert.ok(maxAtOnce <= POOL_SIZE, `at most ${POOL_SIZE} leases at once (saw ${maxAtOnce})`);
    assert.ok(containers.size <= POOL_SIZE, `containers used: ${containers.size}`);
    for (const r of results) {
      assert.equal(r.exitCode, 0);
      assert.equal(r.stdout, `${r.token} False\n`, "correct output, and a clean workspace");
    }
    const stats = await client.getStats(pool);
    assert.equal(stats.counters.acquisitions, SESSIONS);
    assert.equal(stats.counters.releases, SESSIONS);
    assert.ok(stats.counters.waits >= SESSIONS - POOL_SIZE, `waits: ${stats.counters.waits}`);
    assert.equal(stats.counters.waitTimeouts, 0);
    assert.equal(stats.counters.leaseExpirations, 0);
    assert.equal(stats.activeLeases, 0);
    assert.equal(stats.totalSize, POOL_SIZE);
  });
});
