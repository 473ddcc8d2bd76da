// Quick start: lease a warm container, run code, release (by `await using`).
//   SANDPOOL_ADDR=127.0.0.1:50051 SANDPOOL_POOL=python node build/examples/quickstart.js
import { SandpoolClient } from "@sandpool/client";

const client = new SandpoolClient(); // address from SANDPOOL_ADDR, else 127.0.0.1:50051
await using session = await client.acquire(process.env["SANDPOOL_POOL"] ?? "python");
const result = await session.runCollect("import sys\nprint(sum(range(10)), sys.version_info[0])");
console.log(`exit ${result.exitCode} (${result.endReason}) in ${result.durationMs} ms`);
console.log(result.stdout.trim());
