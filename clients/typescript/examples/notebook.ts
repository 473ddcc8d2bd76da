// A code-interpreter loop: a persistent context keeps variables between
// runs, an exception does not lose them, figures come back as plots, and the
// lease starts with its own environment and input file.
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { basename, join } from "node:path";

import { SandpoolClient } from "@sandpool/client";

const client = new SandpoolClient();
await using session = await client.acquire(process.env["SANDPOOL_POOL"] ?? "python", {
  env: { DATASET: "squares" },
  files: [{ path: "/sandbox/data.csv", content: "x,y\n1,1\n2,4\n3,9\n" }],
});

const out = mkdtempSync(join(tmpdir(), "sandpool-notebook-"));
{
  await using ctx = await session.createContext(); // deleted at the end of the block
  await ctx.runCollect("import csv, os\nrows = list(csv.DictReader(open('/sandbox/data.csv')))");
  const failed = await ctx.runCollect("rows[10]");
  console.log(`error: ${failed.stderr.trim().split("\n").at(-1)} - the context survives`);
  const cell = await ctx.runCollect(
    "import matplotlib.pyplot as plt\n" +
      "plt.plot([int(r['x']) for r in rows], [int(r['y']) for r in rows])\n" +
      "plt.title(os.environ['DATASET'])\n" +
      "plt.show()\n" +
      "print(len(rows), 'rows plotted')",
  );
  process.stdout.write(cell.stdout);
  for (const plot of cell.plots) {
    writeFileSync(join(out, basename(plot.name)), plot.data);
    console.log(`saved ${plot.mimeType} ${plot.data.length} bytes`);
  }
}
const svg = await session.runCollect("import matplotlib.pyplot as plt\nplt.bar(['a', 'b'], [1, 2])", { plotFormat: "svg" });
console.log(`svg plots: ${svg.plots.length} ${svg.plots[0]?.mimeType}`);
