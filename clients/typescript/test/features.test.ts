// Plots, persistent contexts, per-lease libraries and setup, and lease errors
// told by their ErrorInfo reason, against a live server.

import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { after, before, describe, test } from "node:test";

import { BinaryWriter } from "@bufbuild/protobuf/wire";
import { Code, ConnectError } from "@connectrpc/connect";
import {
  Context,
  FailedPrecondition,
  InvalidArgument,
  LeaseLost,
  NotFound,
  mapError,
  mapLeaseError,
  proto,
  type SandpoolClient,
} from "@sandpool/client";

import { PYTHON_IMAGE, poolName, startServer, type TestServer } from "./helpers/server.js";
import { DEMO_WHEEL, demoWheel } from "./helpers/wheel.js";

const PNG_MAGIC = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);

const TWO_FIGURES = `
import matplotlib.pyplot as plt
import numpy as np
x = np.linspace(0, 10, 50)
plt.plot(x, np.sin(x)); plt.title('shown')
plt.show()
plt.figure(); plt.plot(x, np.cos(x)); plt.title('left open')
print('plotted')
`;

describe("features", () => {
  let server: TestServer;
  let client: SandpoolClient;
  // One container: what a lease leaves must be gone for the next one.
  const single = poolName("single");
  const pair = poolName("pair");

  before(async () => {
    server = await startServer();
    client = server.client();
    await Promise.all([
      client.createPool(
        { name: single, language: "python", image: PYTHON_IMAGE, minPoolSize: 1, maxPoolSize: 1 },
        { waitReady: true, timeoutMs: 60_000 },
      ),
      client.createPool(
        { name: pair, language: "python", image: PYTHON_IMAGE, minPoolSize: 2, maxPoolSize: 2 },
        { waitReady: true, timeoutMs: 60_000 },
      ),
    ]);
  });

  after(async () => {
    await server?.stop();
  });

  test("two figures come back as two PNG plots; svg when asked", async () => {
    await using session = await client.acquire(single);
    const r = await session.runCollect(TWO_FIGURES);
    assert.equal(r.stdout, "plotted\n");
    assert.equal(r.stderr, "");
    assert.equal(r.plots.length, 2, JSON.stringify(r.artifacts.map((a) => a.name)));
    for (const p of r.plots) {
      assert.ok(Buffer.from(p.data.subarray(0, 8)).equals(PNG_MAGIC), `${p.name} is a PNG`);
      assert.equal(p.mimeType, "image/png");
      assert.match(p.name, /^plots\//);
      assert.equal(p.data.length, p.size);
      assert.equal(p.sha256, createHash("sha256").update(p.data).digest("hex"));
      assert.equal(p.runId, r.runId);
    }
    assert.notDeepEqual(r.plots[0]?.data, r.plots[1]?.data);

    const svg = await session.runCollect("import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.show()", { plotFormat: "svg" });
    assert.equal(svg.plots.length, 1);
    assert.equal(svg.plots[0]?.mimeType, "image/svg+xml");
    assert.match(Buffer.from(svg.plots[0]?.data ?? []).toString(), /<svg/);
    // Nothing of one run shows up in the next.
    const quiet = await session.runCollect("print('quiet')");
    assert.deepEqual(quiet.artifacts, []);
    assert.deepEqual(quiet.plots, []);
  });

  test("a context keeps its state, survives an exception, and is private to its lease", async () => {
    await using session = await client.acquire(pair);
    await using other = await client.acquire(pair);
    let id: string;
    {
      await using ctx = await session.createContext();
      id = ctx.id;
      assert.equal(ctx.language, "python");
      const set = await ctx.runCollect("import math\nx = 41\ndef inc(v):\n    return v + 1\nprint('set')");
      assert.equal(set.stdout, "set\n");
      let streamed = "";
      for await (const e of ctx.run("print(inc(x), math.pi > 3)")) {
        if (e.type === "stdout") {
          streamed += e.text;
        }
      }
      assert.equal(streamed, "42 True\n");

      const boom = await ctx.runCollect("y = 1\nraise ValueError('nope')");
      assert.equal(boom.exitCode, 1);
      assert.equal(boom.endReason, "exited");
      assert.match(boom.stderr, /ValueError: nope/);
      assert.equal((await ctx.runCollect("print(x, y)")).stdout, "41 1\n", "the exception kept the context");
      assert.equal(boom.contextRestarted, false);

      // A plain run of the lease is another process.
      assert.match((await session.runCollect("print(x)")).stderr, /NameError/);
      // Another lease cannot use the context.
      const err = await new Context(other, ctx.id, "python").runCollect("print(x)").catch((e: unknown) => e);
      assert.ok(err instanceof NotFound, String(err));
      assert.ok(!(err instanceof LeaseLost));
      assert.equal(other.lost, undefined);
    }
    // Leaving the block deleted it.
    await assert.rejects(new Context(session, id, "python").runCollect("print(x)"), NotFound);
  });

  test("a wheel uploaded and installed lasts for the lease only", async () => {
    let container: string;
    {
      await using session = await client.acquire(single);
      container = session.containerId;
      await session.upload(`/sandbox/pkgs/${DEMO_WHEEL}`, demoWheel());
      const done = await session.installLibraries([`/sandbox/pkgs/${DEMO_WHEEL}`]);
      assert.match(done.log, /Successfully installed sandpooldemo/);
      assert.ok(done.durationMs > 0);
      const r = await session.runCollect("import sandpooldemo; print(sandpooldemo.VALUE)");
      assert.equal(r.stdout, "42\n", r.stderr);
      await assert.rejects(session.installLibraries(["numpy; rm -rf /"]), InvalidArgument);
      const refused = await session.installLibraries(["requests"]).catch((e: unknown) => e);
      assert.ok(refused instanceof FailedPrecondition && !(refused instanceof LeaseLost), String(refused));
    }
    await using next = await client.acquire(single);
    assert.equal(next.containerId, container);
    const gone = await next.runCollect("import sandpooldemo");
    assert.equal(gone.exitCode, 1);
    assert.match(gone.stderr, /ModuleNotFoundError/);
  });

  test("acquire's env and files are for that lease only", async () => {
    let container: string;
    {
      await using session = await client.acquire(single, {
        env: { PROJECT: "apollo" },
        files: [{ path: "/sandbox/data/input.txt", content: "hello file" }],
      });
      container = session.containerId;
      const r = await session.shell("echo $PROJECT; cat /sandbox/data/input.txt");
      assert.equal(r.stdout, "apollo\nhello file");
    }
    await using plain = await client.acquire(single);
    assert.equal(plain.containerId, container);
    const r = await plain.runCollect("import os\nprint(os.environ.get('PROJECT'), os.path.exists('/sandbox/data/input.txt'))");
    assert.equal(r.stdout, "None False\n");
    await assert.rejects(client.acquire(single, { files: [{ path: "/etc/evil", content: "x" }] }), InvalidArgument);
  });

  test("a pool's namespace reaches the server: only Kubernetes pools may have one", async () => {
    const name = poolName("ns");
    await assert.rejects(
      client.createPool({ name, language: "python", image: PYTHON_IMAGE, namespace: "llm-sandbox" }),
      (err: unknown) => {
        assert.ok(err instanceof InvalidArgument, String(err));
        assert.deepEqual(
          err.details.fieldViolations.map((v) => v.field),
          ["namespace"],
        );
        return true;
      },
    );
    assert.ok(!(await client.listPools()).some((p) => p.name === name), "nothing was created");
  });

  test("a lease ended elsewhere is LeaseLost by the server's ErrorInfo", async () => {
    const unknown = "0".repeat(32);
    const raw = await client.sessions.cancel({ leaseId: unknown, runId: "0".repeat(16) }).catch((e: unknown) => e);
    const mapped = mapError(raw);
    assert.ok(mapped instanceof NotFound);
    assert.deepEqual(mapped.errorInfo, { reason: "LEASE_NOT_FOUND", domain: "sandpool", metadata: { lease_id: unknown } });

    // Released behind the session's back, before its keepalive notices.
    const session = await client.acquire(single, { keepAlive: false });
    await client.sessions.release({ leaseId: session.leaseId });
    const err = await session.upload("/sandbox/x", "x").catch((e: unknown) => e);
    assert.ok(err instanceof LeaseLost, String(err));
    assert.equal(err.errorInfo?.reason, "LEASE_ENDED");
    assert.equal(err.code, Code.FailedPrecondition);
    assert.match(err.reason, /released/);
    assert.equal(session.lost, err.reason);
    await assert.rejects(session.runCollect("print(1)"), LeaseLost);
    await session.release();
  });
});

function errorInfoDetail(
  reason: string,
  leaseId: string,
  more: Record<string, string> = {},
): { type: string; value: Uint8Array } {
  const info = new BinaryWriter().uint32(10).string(reason).uint32(18).string("sandpool");
  for (const [key, v] of Object.entries({ lease_id: leaseId, ...more })) {
    info.uint32(26).bytes(new BinaryWriter().uint32(10).string(key).uint32(18).string(v).finish());
  }
  return { type: "google.rpc.ErrorInfo", value: info.finish() };
}

describe("lease errors without a server", () => {
  const lease = "ab".repeat(16);

  test("the ErrorInfo reason decides, not the message", () => {
    const err = new ConnectError("something else entirely", Code.FailedPrecondition);
    err.details.push(errorInfoDetail("LEASE_ENDED", lease));
    const lost = mapLeaseError(err, lease);
    assert.ok(lost instanceof LeaseLost);
    assert.deepEqual(lost.errorInfo?.metadata, { lease_id: lease });
    // About another lease: not this one's loss.
    assert.ok(!(mapLeaseError(err, "cd".repeat(16)) instanceof LeaseLost));
  });

  test("a message that names the lease in passing is not a loss; a bare old-style one is", () => {
    const runGone = new ConnectError(`run 1 of lease ${lease} does not exist`, Code.NotFound);
    assert.ok(!(mapLeaseError(runGone, lease) instanceof LeaseLost));
    const old = new ConnectError(`lease ${lease} does not exist`, Code.NotFound);
    assert.ok(mapLeaseError(old, lease) instanceof LeaseLost);
    const withOtherReason = new ConnectError(`lease ${lease} does not exist`, Code.NotFound);
    withOtherReason.details.push(errorInfoDetail("SOMETHING_ELSE", lease));
    assert.ok(!(mapLeaseError(withOtherReason, lease) instanceof LeaseLost), "a reason that is not a lease's wins over the message");
  });

  test("a lease whose replica is gone is LeaseLost with REPLICA_GONE", () => {
    const err = new ConnectError('replica "a" is gone', Code.FailedPrecondition);
    err.details.push(errorInfoDetail("LEASE_ENDED", lease, { end: "LEASE_STATE_REPLICA_GONE", replica: "a" }));
    const lost = mapLeaseError(err, lease);
    assert.ok(lost instanceof LeaseLost);
    assert.equal(lost.state, proto.LeaseState.REPLICA_GONE);
  });
});
