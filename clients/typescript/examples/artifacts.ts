// Files and artifacts: upload input data, let the code write a plot and a
// CSV into the output directory (/sandbox/outputs) and show a figure; get
// them from the run's result, then list and download them.
import { mkdirSync, mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";

import { SandpoolClient } from "@sandpool/client";

const client = new SandpoolClient();
await using session = await client.acquire(process.env["SANDPOOL_POOL"] ?? "python");

await session.upload("/sandbox/data.csv", "x,y\n1,1\n2,4\n3,9\n");
const run = await session.runCollect(`
import csv
import matplotlib.pyplot as plt  # sandpool sets a headless backend that captures plt.show()
rows = list(csv.DictReader(open("/sandbox/data.csv")))
xs = [int(r["x"]) for r in rows]; ys = [int(r["y"]) for r in rows]
plt.plot(xs, ys)
plt.savefig("/sandbox/outputs/plot.png")
plt.show()  # figures shown are captured too, as plots/<run>-001.png
open("/sandbox/outputs/sum.csv", "w").write(f"sum\\n{sum(ys)}\\n")
print("points:", len(xs))
`);
console.log(run.stdout.trim());
// Artifacts arrive with the run's events; runCollect gathers them with their bytes.
for (const a of run.artifacts) {
  console.log(`run artifact ${a.plot ? "(plot) " : ""}${a.name.replace(/^plots\/.*\./, "plots/*.")} ${a.data.length} bytes`);
}

const out = mkdtempSync(join(tmpdir(), "sandpool-example-"));
for (const artifact of await session.listArtifacts()) {
  const file = await session.download(artifact.path);
  const local = join(out, artifact.name); // names may have folders: plots/...
  mkdirSync(dirname(local), { recursive: true });
  writeFileSync(local, file.data);
  console.log(`${artifact.name} ${artifact.mimeType} ${file.data.length} bytes`);
}
