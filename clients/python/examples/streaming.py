"""Output arrives while the code runs; a run can be cancelled.

    SANDPOOL_POOL=python python examples/streaming.py
"""

import os
import time

import sandpool

CODE = """
import time
for i in range(3):
    print(f"tick {i}", flush=True)
    time.sleep(0.3)
"""

client = sandpool.Client()
with client.acquire(os.environ.get("SANDPOOL_POOL", "python")) as session:
    t0 = time.monotonic()
    pending = ""  # a chunk may hold part of a line
    for event in session.run(CODE):
        if isinstance(event, sandpool.Stdout):
            pending += event.text
            *lines, pending = pending.split("\n")
            for line in lines:
                print(f"[{time.monotonic() - t0:4.1f}s] {line}")
        elif isinstance(event, sandpool.Exit):
            print(f"exit {event.exit_code} after {event.duration:.1f}s")

    # Cancel a run that would take a minute, as soon as it printed something.
    stream = session.run("import time\nprint('working', flush=True)\ntime.sleep(60)")
    for event in stream:
        if isinstance(event, sandpool.Stdout):
            assert stream.run_id is not None
            session.cancel(stream.run_id)
    assert stream.exit is not None
    print("cancelled run ended:", stream.exit.end_reason.value)
