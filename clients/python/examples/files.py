"""Upload input, run code on it, download and list what it wrote.

    SANDPOOL_POOL=python python examples/files.py
"""

import os

import sandpool

client = sandpool.Client()
with client.acquire(os.environ.get("SANDPOOL_POOL", "python")) as session:
    session.upload("/sandbox/input.csv", b"x,y\n1,2\n3,4\n")
    result = session.run_collect(
        "import csv\n"
        "rows = list(csv.DictReader(open('input.csv')))\n"
        "total = sum(int(r['x']) * int(r['y']) for r in rows)\n"
        "open('/sandbox/outputs/total.txt', 'w').write(str(total))\n"
        "print('rows:', len(rows))\n"
    )
    print(result.stdout, end="")
    print("total:", session.download("/sandbox/outputs/total.txt").decode())
    for artifact in session.list_artifacts():
        print("artifact:", artifact.name, artifact.mime_type, artifact.size, "bytes")
