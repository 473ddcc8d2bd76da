// Full round trip against a live server: pool admin, acquire, code, argv and
// shell runs, stdin/env, timeouts, cancel, files, artifacts, release.

import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";

import { LeaseLost, NotFound, type RunEvent, type SandpoolClient } from "@sandpool/client";

import { PYTHON_IMAGE, poolName, startServer, waitFor, type TestServer } from "./helpers/server.js";

describe("round trip", () => {
  let server: TestServer;
  let client: SandpoolClient;
  const pool = poolName("rt");

  before(async () => {
    server = await startServer();
    client = server.client();
    const created = await client.createPool(
      { name: pool, language: "python", image: PYTHON_IMAGE, minPoolSize: 1, maxPoolSize: 2 },
      { waitReady: true, timeoutMs: 60_000 },
    );
    assert.equal(created.name, pool);
    assert.equal(created.spec?.language, "python");
  });

  after(async () => {
    await server?.stop();
  });

  test("pools are listed with their effective spec and stats", async () => {
    const pools = await client.listPools();
    const mine = pools.find((p) => p.name === pool);
    assert.ok(mine, `listPools has ${pool}: ${pools.map((p) => p.name).join(", ")}`);
    assert.equal(mine.phase, "ready");
    assert.equal(mine.spec?.image, PYTHON_IMAGE);
    assert.equal(mine.spec?.config?.maxPoolSize, 2);
    const stats = await client.getStats(pool);
    assert.equal(stats.pool, pool);
    assert.equal(stats.maxSize, 2);
    assert.equal(stats.minSize, 1);
    assert.ok(stats.totalSize >= 1);
    assert.equal(stats.closed, false);
  });

  test("acquire, run code, argv and shell, release", async () => {
    const session = await client.acquire(pool, { ttlMs: 10_000 });
    try {
      assert.match(session.leaseId, /^[0-9a-f]{32}$/);
      assert.equal(session.lease.pool, pool);
      assert.equal(session.lease.language, "python");
      assert.equal(session.lease.ttlMs, 10_000);
      assert.ok(session.containerId.length > 0);

      const code = await session.runCollect("import sys\nprint('hello', 6 * 7)\nprint('oops', file=sys.stderr)\nsys.exit(3)");
      assert.equal(code.stdout, "hello 42\n");
      assert.equal(code.stderr, "oops\n");
      assert.equal(code.exitCode, 3);
      assert.equal(code.endReason, "exited");
      // A resumable run: the client chose its id.
      assert.match(code.runId, /^t[0-9a-f]{32}$/);
      assert.ok(code.durationMs > 0);

      const argv = await session.exec(["python3", "-c", "import sys; print(sys.argv[1:])", "a b", "$HOME"]);
      assert.equal(argv.stdout, "['a b', '$HOME']\n");
      assert.equal(argv.exitCode, 0);

      const shell = await session.shell("echo \"$GREETING\" | tr a-z A-Z; cat; pwd", {
        env: { GREETING: "hi there" },
        stdin: "from stdin\n",
        workingDir: "/tmp",
      });
      assert.equal(shell.stdout, "HI THERE\nfrom stdin\n/tmp\n");
      assert.equal(shell.exitCode, 0);
    } finally {
      await session.release();
    }
    assert.equal(session.released, true);
    // Idempotent, and later calls say the lease is gone.
    await session.release();
    await assert.rejects(session.runCollect("print(1)"), LeaseLost);
  });

  test("a run past its timeout is killed and the container stays usable", async () => {
    const session = await client.acquire(pool);
    try {
      const slow = await session.runCollect("import time\nprint('start', flush=True)\ntime.sleep(30)", { timeoutMs: 1000 });
      assert.equal(slow.endReason, "timeout");
      assert.equal(slow.stdout, "start\n");
      assert.ok(slow.durationMs < 10_000, `killed promptly (${slow.durationMs} ms)`);
      const after = await session.runCollect("print('still here')");
      assert.equal(after.stdout, "still here\n");
    } finally {
      await session.release();
    }
  });

  test("cancel kills a running run", async () => {
    const session = await client.acquire(pool);
    try {
      const events: RunEvent[] = [];
      let cancelled: boolean | undefined;
      for await (const e of session.run("import time\nprint('go', flush=True)\ntime.sleep(60)")) {
        events.push(e);
        if (e.type === "stdout" && cancelled === undefined) {
          const started = events.find((x) => x.type === "started");
          assert.ok(started?.type === "started");
          cancelled = await session.cancel(started.runId);
        }
      }
      assert.equal(cancelled, true);
      const exit = events.at(-1);
      assert.ok(exit?.type === "exit");
      assert.equal(exit.endReason, "cancelled");
      // A finished run: cancel answers false; an unknown run id: NotFound.
      const started = events[0];
      assert.ok(started?.type === "started");
      assert.equal(await session.cancel(started.runId), false);
      await assert.rejects(session.cancel("no-such-run"), NotFound);
      // Not a lease problem: the session is still usable.
      assert.equal(session.lost, undefined);
      assert.equal((await session.exec(["true"])).exitCode, 0);
    } finally {
      await session.release();
    }
  });

  test("upload and download round trip, bytes and files", async () => {
    const session = await client.acquire(pool);
    try {
      const bytes = new Uint8Array(256 * 3 + 5).map((_, i) => i % 256);
      const up = await session.upload("/sandbox/data/bytes.bin", bytes);
      assert.equal(up.size, bytes.length);
      assert.equal(up.sha256, createHash("sha256").update(bytes).digest("hex"));
      const down = await session.download("/sandbox/data/bytes.bin");
      assert.equal(down.kind, "file");
      assert.equal(down.size, bytes.length);
      assert.deepEqual(down.data, bytes);

      // The code in the container sees what was uploaded.
      const seen = await session.runCollect(
        "import hashlib\nprint(hashlib.sha256(open('/sandbox/data/bytes.bin','rb').read()).hexdigest())",
      );
      assert.equal(seen.stdout.trim(), up.sha256);

      // Text, mode, and a 3 MiB local file streamed in chunks.
      // (/sandbox is a noexec tmpfs: the script runs through sh.)
      await session.upload("/sandbox/run.sh", "#!/bin/sh\necho ran\n", { mode: 0o750 });
      assert.equal((await session.exec(["stat", "-c", "%a", "/sandbox/run.sh"])).stdout, "750\n");
      assert.equal((await session.exec(["sh", "/sandbox/run.sh"])).stdout, "ran\n");
      const dir = mkdtempSync(join(tmpdir(), "sandpool-ts-files-"));
      const big = randomBytes(3 * 1024 * 1024 + 17);
      writeFileSync(join(dir, "big.bin"), big);
      const upBig = await session.uploadFile("/tmp/big.bin", join(dir, "big.bin"));
      assert.equal(upBig.size, big.length);
      assert.equal(upBig.sha256, createHash("sha256").update(big).digest("hex"));
      const header = await session.downloadFile("/tmp/big.bin", join(dir, "back.bin"));
      assert.equal(header.size, big.length);
      assert.ok(readFileSync(join(dir, "back.bin")).equals(big));
      rmSync(dir, { recursive: true });

      // A directory comes back as a tar archive.
      const tar = await session.download("/sandbox/data");
      assert.equal(tar.kind, "tar");
      assert.ok(Buffer.from(tar.data).includes(Buffer.from("bytes.bin")));

      await assert.rejects(session.download("/sandbox/missing.txt"), NotFound);
      assert.equal(session.lost, undefined);
    } finally {
      await session.release();
    }
  });

  test("artifacts: files written to the output directory are listed and downloadable", async () => {
    const session = await client.acquire(pool);
    try {
      const run = await session.runCollect(
        "import os\nos.makedirs('/sandbox/outputs', exist_ok=True)\n" +
          "open('/sandbox/outputs/result.csv','w').write('a,b\\n1,2\\n')\nprint('done')",
      );
      assert.equal(run.stdout, "done\n");
      const listed = await session.listArtifacts();
      const csv = listed.find((a) => a.name === "result.csv");
      assert.ok(csv, `result.csv listed: ${JSON.stringify(listed.map((a) => a.name))}`);
      assert.equal(csv.path, "/sandbox/outputs/result.csv");
      assert.equal(csv.size, 8);
      assert.equal(csv.mimeType, "text/csv");
      const file = await session.download(csv.path);
      assert.equal(Buffer.from(file.data).toString(), "a,b\n1,2\n");
    } finally {
      await session.release();
    }
  });

  test("artifacts and captured plots arrive as run events, with their bytes", async () => {
    const session = await client.acquire(pool);
    try {
      const events: RunEvent[] = [];
      const code =
        "import os\nimport matplotlib.pyplot as plt\nplt.plot([1, 4, 9])\nplt.show()\n" +
        "os.makedirs('/sandbox/outputs', exist_ok=True)\nopen('/sandbox/outputs/x.txt','w').write('xyz')";
      for await (const e of session.run(code, { plotFormat: "svg" })) {
        events.push(e);
      }
      const exitAt = events.findIndex((e) => e.type === "exit");
      assert.equal(exitAt, events.length - 1, "exit comes last");
      const chunks = events.filter((e) => e.type === "artifact");
      assert.ok(chunks.length >= 2, `artifact events: ${chunks.length}`);
      assert.ok(chunks.some((c) => c.last));

      const run = await session.runCollect(code, { plotFormat: "svg" });
      assert.equal(run.exitCode, 0, run.stderr);
      const x = run.artifacts.find((a) => a.name === "x.txt");
      assert.ok(x, `x.txt among ${JSON.stringify(run.artifacts.map((a) => a.name))}`);
      assert.equal(Buffer.from(x.data).toString(), "xyz");
      assert.equal(x.mimeType, "text/plain");
      assert.equal(x.plot, false);
      assert.equal(x.runId, run.runId);
      assert.equal(x.sha256, createHash("sha256").update("xyz").digest("hex"));
      const plot = run.artifacts.find((a) => a.plot);
      assert.ok(plot, "the figure shown was captured");
      assert.match(plot.name, /^plots\/.+\.svg$/);
      assert.equal(plot.mimeType, "image/svg+xml");
      assert.equal(plot.omitted, false);
      assert.equal(plot.data.length, plot.size);
      assert.match(Buffer.from(plot.data).toString(), /<svg/);
      // The same file, downloaded.
      assert.deepEqual((await session.download(plot.path)).data, plot.data);
    } finally {
      await session.release();
    }
  });

  test("acquire can set the lease's environment and place files", async () => {
    await using session = await client.acquire(pool, {
      env: { GREETING: "from acquire" },
      files: [
        { path: "/sandbox/input/config.json", content: '{"n": 3}' },
        { path: "/sandbox/input/blob.bin", content: new Uint8Array([0, 1, 255]), mode: 0o600 },
      ],
    });
    const r = await session.runCollect(
      "import os, json\nprint(os.environ['GREETING'], json.load(open('/sandbox/input/config.json'))['n'])\n" +
        "print(list(open('/sandbox/input/blob.bin','rb').read()), oct(os.stat('/sandbox/input/blob.bin').st_mode & 0o777))",
    );
    assert.equal(r.stdout, "from acquire 3\n[0, 1, 255] 0o600\n");
  });

  test("watchStats streams changes and ends when the pool is deleted", async () => {
    const name = poolName("watch");
    await client.createPool({ name, language: "python", image: PYTHON_IMAGE, minPoolSize: 0, maxPoolSize: 1 });
    const seen: { busy: number; closed: boolean; acquisitions: number }[] = [];
    const watching = (async () => {
      for await (const s of client.watchStats(name)) {
        seen.push({ busy: s.stateCounts.busy, closed: s.closed, acquisitions: s.counters.acquisitions });
      }
    })();
    await waitFor("the first stats message", () => seen.length > 0);
    assert.equal(seen[0]?.acquisitions, 0);
    const session = await client.acquire(name, { waitMs: 60_000 });
    await waitFor("a message with the lease counted", () => seen.some((s) => s.busy === 1 && s.acquisitions === 1), 10_000);
    await session.release();
    const deleted = await client.deletePool(name, { wait: true, timeoutMs: 60_000 });
    assert.equal(deleted.busyRemaining, 0);
    await watching;
    assert.equal(seen.at(-1)?.closed, true);
    await assert.rejects(client.getStats(name), NotFound);
  });
});
