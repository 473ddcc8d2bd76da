// Resumable runs against a live server through a proxy that cuts the
// connections: a run survives being reset mid-stream twice and loses
// nothing, an outage longer than the server's buffer comes back as one gap
// of the exact size, and leaving the loop early still cancels the run.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import type { GapEvent, SandpoolClient } from "@sandpool/client";

import { CutProxy } from "./helpers/proxy.js";
import { PYTHON_IMAGE, poolName, startServer, type TestServer } from "./helpers/server.js";

const COUNT = "import time\nfor i in range(30):\n    print(f'line {i}', flush=True)\n    time.sleep(0.05)\n";
const EXPECTED = Array.from({ length: 30 }, (_, i) => `line ${i}\n`).join("");

describe("resumable runs", () => {
  let server: TestServer;
  let proxy: CutProxy;
  let client: SandpoolClient;
  const pool = poolName("resume");
  const small = poolName("gap");

  before(async () => {
    server = await startServer();
    const admin = server.client();
    await admin.createPool(
      { name: pool, language: "python", image: PYTHON_IMAGE, minPoolSize: 1, maxPoolSize: 2 },
      { waitReady: true, timeoutMs: 60_000 },
    );
    await admin.createPool(
      { name: small, language: "python", image: PYTHON_IMAGE, minPoolSize: 1, maxPoolSize: 1, runBufferBytes: 4096 },
      { waitReady: true, timeoutMs: 60_000 },
    );
    proxy = await CutProxy.start(server.address);
    client = server.client({ address: proxy.address });
  });

  after(async () => {
    await proxy?.close();
    await server?.stop();
  });

  test("a run survives two connection resets and loses nothing", async () => {
    const session = await client.acquire(pool, { ttlMs: 20_000 });
    const before = proxy.forwarded;
    let out = "";
    const gaps: GapEvent[] = [];
    let exitCode = -1;
    for await (const e of session.run(COUNT, { timeoutMs: 60_000 })) {
      if (e.type === "stdout") {
        out += e.text;
        if ((out.includes("line 5\n") && proxy.forwarded === before) || (out.includes("line 15\n") && proxy.forwarded === before + 1)) {
          proxy.cut();
        }
      } else if (e.type === "gap") {
        gaps.push(e);
      } else if (e.type === "exit") {
        assert.equal(e.endReason, "exited");
        exitCode = e.exitCode;
      }
    }
    assert.ok(proxy.forwarded >= before + 2, `reconnected after each cut (${proxy.forwarded - before} new connections)`);
    assert.equal(out, EXPECTED);
    assert.deepEqual(gaps, []);
    assert.equal(exitCode, 0);
    assert.equal((await session.runCollect("print('still here')")).stdout, "still here\n");
    await session.release();
  });

  test("an outage longer than the buffer is one gap of the exact size", async () => {
    const session = await client.acquire(small, { ttlMs: 20_000 });
    const code =
      "import time, sys\nprint('start', flush=True)\ntime.sleep(1)\n" +
      "for i in range(200):\n    sys.stdout.write(f'{i:04d}' + 'x' * 95 + '\\n')\n    sys.stdout.flush()\n" +
      "time.sleep(0.5)\nprint('end', flush=True)\n";
    let out = "";
    const gaps: GapEvent[] = [];
    let written = -1;
    for await (const e of session.run(code, { timeoutMs: 60_000 })) {
      if (e.type === "stdout") {
        out += e.text;
        if (out === "start\n") {
          proxy.refusing = true;
          proxy.cut();
          await new Promise((resolve) => setTimeout(resolve, 3_000));
          proxy.refusing = false;
        }
      } else if (e.type === "gap") {
        gaps.push(e);
      } else if (e.type === "exit") {
        assert.equal(e.endReason, "exited");
        written = e.stdoutBytes;
      }
    }
    assert.equal(gaps.length, 1, JSON.stringify(gaps));
    const gap = gaps[0]!;
    assert.ok(gap.stdoutBytes > 0 && gap.fromSeq <= gap.toSeq, JSON.stringify(gap));
    assert.equal(Buffer.byteLength(out) + gap.stdoutBytes, written);
    assert.ok(out.endsWith("end\n"), out);
    await session.release();
  });

  test("leaving the loop early cancels the run", async () => {
    const session = await client.acquire(pool);
    const beat = "import time\nprint('up', flush=True)\nwhile True:\n    open('/tmp/beat', 'a').write('x')\n    time.sleep(0.05)\n";
    for await (const e of session.run(beat, { timeoutMs: 60_000 })) {
      if (e.type === "stdout") {
        break;
      }
    }
    const size = "import os\nprint(os.path.getsize('/tmp/beat'))";
    await new Promise((resolve) => setTimeout(resolve, 1_000));
    const first = (await session.runCollect(size)).stdout;
    await new Promise((resolve) => setTimeout(resolve, 1_000));
    assert.equal((await session.runCollect(size)).stdout, first, "the abandoned run still writes");
    await session.release();
  });
});
