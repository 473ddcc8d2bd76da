// Streaming: print each event of a run as it arrives, then run a shell
// command with stdin and environment.
import { SandpoolClient } from "@sandpool/client";

const client = new SandpoolClient();
const session = await client.acquire(process.env["SANDPOOL_POOL"] ?? "python", { ttlMs: 10_000 });
try {
  const code = "import time\nfor i in range(3):\n    print('step', i, flush=True)\n    time.sleep(0.2)";
  for await (const event of session.run(code, { timeoutMs: 10_000 })) {
    switch (event.type) {
      case "started":
        console.log(`started run ${event.runId}`);
        break;
      case "stdout":
        process.stdout.write(event.text); // chunks as they come, not lines
        break;
      case "stderr":
        process.stderr.write(event.text);
        break;
      case "exit":
        console.log(`exit ${event.exitCode} (${event.endReason})`);
        break;
    }
  }
  const shell = await session.shell("tr a-z A-Z; echo $WHO", { stdin: "shouting\n", env: { WHO: "sandpool" } });
  process.stdout.write(shell.stdout);
} finally {
  await session.release();
}
