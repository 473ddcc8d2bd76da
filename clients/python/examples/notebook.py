"""A code-interpreter loop: a persistent context keeps variables between
runs, figures come back as plots, and the lease starts with its own
environment and input file.

    SANDPOOL_POOL=python python examples/notebook.py [OUTPUT_DIR]
"""

import os
import sys
import tempfile

import sandpool

out_dir = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="sandpool-plots-")
client = sandpool.Client()
with client.acquire(
    os.environ.get("SANDPOOL_POOL", "python"),
    env={"DATASET": "squares"},
    files={"/sandbox/data.csv": "x,y\n1,1\n2,4\n3,9\n"},
) as session:
    with session.context() as ctx:
        ctx.run_collect("import csv, os\nrows = list(csv.DictReader(open('/sandbox/data.csv')))")
        failed = ctx.run_collect("rows[10]")
        print("error:", failed.stderr.strip().splitlines()[-1], "- the context survives")
        cell = ctx.run_collect(
            "import matplotlib.pyplot as plt\n"
            "plt.plot([int(r['x']) for r in rows], [int(r['y']) for r in rows])\n"
            "plt.title(os.environ['DATASET'])\n"
            "plt.show()\n"
            "print(len(rows), 'rows plotted')"
        )
        print(cell.stdout, end="")
        for plot in cell.plots:
            path = os.path.join(out_dir, os.path.basename(plot.name))
            with open(path, "wb") as f:
                f.write(plot.data)
            print("saved", plot.mime_type, len(plot.data), "bytes")
    svg = session.run_collect("import matplotlib.pyplot as plt\nplt.bar(['a', 'b'], [1, 2])", plot_format="svg")
    print("svg plots:", len(svg.plots), svg.plots[0].mime_type)
