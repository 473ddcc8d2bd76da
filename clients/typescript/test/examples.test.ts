// The programs in examples/ run against a live server, exit on their own,
// and print what they should.

import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { promisify } from "node:util";

import { PACKAGE_DIR, PYTHON_IMAGE, poolName, startServer, type TestServer } from "./helpers/server.js";

const run = promisify(execFile);

const EXAMPLES: [file: string, expected: RegExp[]][] = [
  ["build/examples/quickstart.js", [/^exit 0 \(exited\) in \d+ ms$/m, /^45 3$/m]],
  [
    "build/examples/streaming.js",
    [/^started run t[0-9a-f]{32}$/m, /^step 0\nstep 1\nstep 2\nexit 0 \(exited\)$/m, /^SHOUTING\nsandpool$/m],
  ],
  [
    "build/examples/artifacts.js",
    [
      /^points: 3$/m,
      /^run artifact plot\.png \d{4,} bytes$/m,
      /^run artifact \(plot\) plots\/\*\.png \d{4,} bytes$/m,
      /^run artifact sum\.csv 7 bytes$/m,
      /^plot\.png image\/png \d{4,} bytes$/m,
      /^sum\.csv text\/csv 7 bytes$/m,
    ],
  ],
  [
    "build/examples/errors.js",
    [
      /^NotFound: pool "no-such-pool" does not exist$/m,
      /^InvalidArgument on config\.min_pool_size$/m,
      /^PoolExhausted, retry after 1000 ms$/m,
      /^still holding [0-9a-f]{12}$/m,
      /^LeaseLost \(LEASE_ENDED\): lease [0-9a-f]{32} .*released/m,
    ],
  ],
  [
    "build/examples/notebook.js",
    [
      /^error: IndexError: list index out of range - the context survives$/m,
      /^3 rows plotted$/m,
      /^saved image\/png \d{4,} bytes$/m,
      /^svg plots: 1 image\/svg\+xml$/m,
    ],
  ],
  [
    "examples/admin.mjs",
    [/^created example-admin-\d+: ready, image sandpool\/python:bookworm$/m, /^busy while leased: 1$/m, /^pools: listed$/m, /^watch saw several updates$/m],
  ],
];

describe("examples", () => {
  let server: TestServer;
  const pool = poolName("examples");

  before(async () => {
    server = await startServer();
    await server.client().createPool(
      { name: pool, language: "python", image: PYTHON_IMAGE, minPoolSize: 2, maxPoolSize: 2 },
      { waitReady: true, timeoutMs: 60_000 },
    );
  });

  after(async () => {
    await server?.stop();
  });

  for (const [file, expected] of EXAMPLES) {
    test(file, async () => {
      const { stdout } = await run(process.execPath, [join(PACKAGE_DIR, file)], {
        cwd: PACKAGE_DIR,
        env: { ...process.env, SANDPOOL_ADDR: server.address, SANDPOOL_POOL: pool },
        // An example that does not exit on its own (a leaked keepalive) fails here.
        timeout: 30_000,
      }).catch((err: Error & { stdout?: string; stderr?: string }) => {
        throw new Error(`${file} failed: ${err.message}\nstdout:\n${err.stdout ?? ""}\nstderr:\n${err.stderr ?? ""}`);
      });
      for (const re of expected) {
        assert.match(stdout, re);
      }
    });
  }

  test("every pool an example made is gone, and no lease is left", async () => {
    const client = server.client();
    const pools = await client.listPools();
    assert.deepEqual(
      pools.map((p) => p.name),
      [pool],
    );
    const stats = await client.getStats(pool);
    assert.equal(stats.activeLeases, 0);
  });
});
