// The TypeScript client on a Kubernetes pool: every RPC it makes, against a
// real sandpool server whose Kubernetes backend talks to the test API server
// (tests/k8s-apiserver: a stand-in for a cluster, which cannot run here; its
// pods are real Docker containers, so the code below really runs). The full
// end-to-end suites stay on Docker; this is the short pass on Kubernetes.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import { NotFound, type RunEvent, type SandpoolClient } from "@sandpool/client";

import { startApiServer, type ApiServer } from "./helpers/kubernetes.js";
import { PYTHON_IMAGE, poolName, startServer, waitFor, type TestServer } from "./helpers/server.js";
import { DEMO_WHEEL, demoWheel } from "./helpers/wheel.js";

const PNG_MAGIC = Buffer.from([0x89, 0x50, 0x4e, 0x47]);

describe("kubernetes pools", () => {
  let api: ApiServer;
  let server: TestServer;
  let client: SandpoolClient;
  const pool = poolName("kube");

  before(async () => {
    api = await startApiServer("ts-kube");
    server = await startServer({ configExtra: api.config });
    client = server.client();
    await client.createPool(
      { name: pool, backend: "kubernetes", language: "python", image: PYTHON_IMAGE, minPoolSize: 2, maxPoolSize: 2 },
      { waitReady: true, timeoutMs: 120_000 },
    );
  });

  after(async () => {
    const serverId = server?.serverId;
    try {
      await server?.stop();
      if (serverId !== undefined) {
        assert.deepEqual(await api.pods(serverId), [], "the server removed its pods on shutdown");
      }
    } finally {
      await api?.stop();
    }
  });

  test("the pool's pods are in the server's namespace, and its stats count them", async () => {
    const info = await client.getPool(pool);
    assert.equal(info.phase, "ready");
    assert.ok((await client.listPools()).some((p) => p.name === pool));
    const pods = await api.pods(server.serverId);
    assert.equal(pods.length, 2, pods.join(" "));
    assert.ok(pods.every((p) => p.startsWith("ts-kube/")), pods.join(" "));
    const stats = await client.getStats(pool);
    assert.equal(stats.totalSize, 2);
    assert.equal(stats.stateCounts.idle, 2);
    for await (const s of client.watchStats(pool)) {
      assert.equal(s.pool, pool);
      break;
    }
  });

  test("a lease runs, streams, reads stdin, times out, moves files and keeps a context", async () => {
    await using session = await client.acquire(pool, {
      env: { PROJECT: "apollo" },
      files: [{ path: "/sandbox/data/input.txt", content: "hello file" }],
    });
    // Pods in the server's own namespace are named without it.
    assert.ok((await api.pods(server.serverId)).includes(`ts-kube/${session.containerId}`), "the lease holds one of the pods");

    const who = await session.shell("id -u; echo $PROJECT; cat /sandbox/data/input.txt; echo; ls /sys/class/net");
    assert.equal(who.exitCode, 0, who.stderr);
    assert.equal(who.stdout, "1000\napollo\nhello file\nlo\n", "the sandbox user, the lease's env and files, no network");

    const events: RunEvent["type"][] = [];
    for await (const e of session.run("import sys\nprint('out', flush=True)\nprint('err', file=sys.stderr)\nsys.exit(3)")) {
      events.push(e.type);
    }
    assert.equal(events[0], "started");
    assert.equal(events.at(-1), "exit");
    assert.ok(events.includes("stdout") && events.includes("stderr"), events.join(" "));
    const failed = await session.runCollect("import sys; sys.exit(3)");
    assert.equal(failed.exitCode, 3);
    assert.equal(failed.endReason, "exited");

    const echoed = await session.runCollect("import sys; print(sys.stdin.read().upper())", { stdin: "shout" });
    assert.equal(echoed.stdout, "SHOUT\n");

    const t0 = Date.now();
    const slow = await session.shell("sleep 30 & sleep 30; echo never", { timeoutMs: 1500 });
    assert.equal(slow.endReason, "timeout");
    assert.ok(Date.now() - t0 < 10_000, `the timeout ended the run in ${Date.now() - t0} ms`);
    const left = await session.shell("ps -eo args | grep -c '^sleep 30' || true");
    assert.equal(left.stdout.trim(), "0", "the timeout killed the whole tree");

    await session.upload("/sandbox/data/up.bin", Buffer.from([0, 1, 2, 255]));
    const down = await session.download("/sandbox/data/up.bin");
    assert.deepEqual(Buffer.from(down.data), Buffer.from([0, 1, 2, 255]));
    assert.equal(down.kind, "file");

    const art = await session.runCollect(
      "open('/sandbox/outputs/result.csv', 'w').write('a,b\\n1,2\\n')\n" +
        "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.show()",
    );
    assert.equal(art.exitCode, 0, art.stderr);
    assert.ok(art.artifacts.some((a) => a.name === "result.csv"), art.artifacts.map((a) => a.name).join(" "));
    assert.equal(art.plots.length, 1);
    assert.deepEqual(Buffer.from(art.plots[0]!.data.subarray(0, 4)), PNG_MAGIC);
    const listed = await session.listArtifacts(art.runId);
    assert.ok(listed.some((a) => a.name === "result.csv"));

    {
      await using ctx = await session.createContext();
      await ctx.runCollect("x = 41");
      assert.equal((await ctx.runCollect("print(x + 1)")).stdout, "42\n");
    }

    // A wheel from a file: installs need no network, so a pool on none can.
    await session.upload(`/sandbox/pkgs/${DEMO_WHEEL}`, demoWheel());
    const installed = await session.installLibraries([`/sandbox/pkgs/${DEMO_WHEEL}`]);
    assert.match(installed.log, /Successfully installed sandpooldemo/);
    assert.equal((await session.runCollect("import sandpooldemo; print(sandpooldemo.VALUE)")).stdout, "42\n");

    // Cancel a run from beside it.
    const running = session.run("import time\nprint('go', flush=True)\ntime.sleep(60)");
    let runId = "";
    let asked = false;
    let end: string | undefined;
    for await (const e of running) {
      if (e.type === "started") {
        runId = e.runId;
      }
      if (e.type === "stdout" && !asked) {
        asked = true;
        assert.equal(await session.cancel(runId), true);
      }
      if (e.type === "exit") {
        end = e.endReason;
      }
    }
    assert.equal(end, "cancelled");
  });

  test("what one lease leaves, the next lease on the pod never sees", async () => {
    let container: string;
    {
      await using first = await client.acquire(pool);
      container = first.containerId;
      await first.shell("echo secret > /sandbox/left; echo secret > /tmp/left; (sleep 600 &)");
    }
    await waitFor(
      "the pod to be reset and idle again",
      async () => (await client.getStats(pool)).stateCounts.idle === 2,
      30_000,
      100,
    );
    // Two leases at once: one of them is on the pod the first one used.
    await using a = await client.acquire(pool);
    await using b = await client.acquire(pool);
    const same = [a, b].find((s) => s.containerId === container);
    assert.ok(same !== undefined, "the pod is back in the pool");
    const look = await same.shell("ls -A /sandbox /tmp; ps -eo args | grep -c '^sleep 600' || true");
    assert.doesNotMatch(look.stdout, /left/);
    assert.equal(look.stdout.trim().split("\n").at(-1), "0");
  });

  test("an owned pool on Kubernetes: its pods come and go with it", async () => {
    const name = poolName("kube-owned");
    {
      await using owned = await client.createOwnedPool(
        { name, backend: "kubernetes", language: "python", image: PYTHON_IMAGE, minPoolSize: 1, maxPoolSize: 1 },
        { ownerTtlMs: 6000, waitReady: true, timeoutMs: 120_000 },
      );
      await using session = await owned.acquire();
      assert.equal((await session.runCollect("print(6 * 7)")).stdout, "42\n");
    }
    await waitFor(
      "the owned pool to be deleted with its owner's handle",
      async () => (await client.getPool(name).then(() => false, (e: unknown) => e instanceof NotFound)),
      30_000,
      100,
    );
    await waitFor(
      "the owned pool's pod to go",
      async () => (await api.pods(server.serverId)).length === 2,
      30_000,
      100,
    );
  });
});
