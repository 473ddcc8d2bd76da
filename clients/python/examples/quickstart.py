"""Lease a warm container, run code in it, give it back.

    SANDPOOL_ADDR=127.0.0.1:50051 SANDPOOL_POOL=python python examples/quickstart.py
"""

import os

import sandpool

client = sandpool.Client()  # $SANDPOOL_ADDR, else 127.0.0.1:50051
with client.acquire(os.environ.get("SANDPOOL_POOL", "python")) as session:
    result = session.run_collect("import platform\nprint('hello from', platform.python_version())")
    print(result.stdout, end="")
    print("exit code:", result.exit_code, "end reason:", result.end_reason.value)
