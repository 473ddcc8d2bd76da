// Pool administration in plain JavaScript: create a pool, watch its
// statistics while a lease comes and goes, then delete it.
//   SANDPOOL_ADDR=127.0.0.1:50051 node examples/admin.mjs
import { SandpoolClient } from "@sandpool/client";

const client = new SandpoolClient();
const name = `example-admin-${process.pid}`;
const pool = await client.createPool(
  { name, language: "python", minPoolSize: 1, maxPoolSize: 2, idleTimeoutMs: 60_000, defaultLeaseTtlMs: 5_000 },
  { waitReady: true, timeoutMs: 60_000 },
);
console.log(`created ${pool.name}: ${pool.phase}, image ${pool.spec?.image}`);

const watching = (async () => {
  let updates = 0;
  for await (const s of client.watchStats(name)) {
    updates += 1;
    if (s.closed) break;
  }
  return updates;
})();

const session = await client.acquire(name);
const busy = (await client.getStats(name)).stateCounts.busy;
console.log(`busy while leased: ${busy}`);
await session.release();

console.log(`pools: ${(await client.listPools()).map((p) => p.name).includes(name) ? "listed" : "missing"}`);
await client.deletePool(name, { wait: true, timeoutMs: 60_000 });
console.log(`watch saw ${(await watching) >= 2 ? "several" : "too few"} updates`);
