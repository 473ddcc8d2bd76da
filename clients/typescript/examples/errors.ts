// Errors: every failure is a SandpoolError subclass chosen by gRPC code.
import { InvalidArgument, LeaseLost, NotFound, PoolExhausted, SandpoolClient, SandpoolError } from "@sandpool/client";

const client = new SandpoolClient();

try {
  await client.acquire("no-such-pool");
} catch (err) {
  if (err instanceof NotFound) console.log(`NotFound: ${err.rawMessage}`);
  else throw err;
}

try {
  await client.createPool({ name: "broken", language: "python", minPoolSize: 3, maxPoolSize: 1 });
} catch (err) {
  if (err instanceof InvalidArgument) console.log(`InvalidArgument on ${err.field}`);
  else throw err;
}

// A FAIL_FAST pool of one: the second acquire is refused at once.
const pool = `example-ff-${process.pid}`;
await client.createPool(
  { name: pool, language: "python", minPoolSize: 1, maxPoolSize: 1, exhaustionStrategy: "fail_fast" },
  { waitReady: true, timeoutMs: 60_000 },
);
{
  await using first = await client.acquire(pool);
  try {
    await client.acquire(pool);
  } catch (err) {
    if (err instanceof PoolExhausted) console.log(`PoolExhausted, retry after ${err.retryAfterMs} ms`);
    else if (err instanceof SandpoolError) console.log(`other error: ${err.codeName}`);
    else throw err;
  }
  console.log(`still holding ${first.containerId.slice(0, 12)}`);
  // A lease ended behind the session's back (here by a raw Release): the
  // next call says so, by the server's machine-readable reason.
  await client.sessions.release({ leaseId: first.leaseId });
  try {
    await first.runCollect("print(1)");
  } catch (err) {
    if (err instanceof LeaseLost) console.log(`LeaseLost (${err.errorInfo?.reason}): ${err.reason}`);
    else throw err;
  }
}
await client.deletePool(pool, { wait: true, timeoutMs: 60_000 });
