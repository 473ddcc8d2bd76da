"""Resumable runs from Python: a run survives its connection being reset
mid-stream (the client resumes it with Attach and loses nothing), an outage
longer than the server's buffer comes back as a Gap of the exact size, and a
cancelled stream still cancels its run. Real server, real sockets, a proxy
that cuts them."""

from __future__ import annotations

import asyncio
import time

import sandpool

from conftest import CutProxy, PoolFactory

COUNT = "import time\nfor i in range(30):\n    print(f'line {i}', flush=True)\n    time.sleep(0.05)\n"
EXPECTED = "".join(f"line {i}\n" for i in range(30))


def test_a_run_survives_two_connection_resets_and_loses_nothing(
    cut_proxy: CutProxy, make_pool: PoolFactory
) -> None:
    pool = make_pool()
    client = sandpool.Client(cut_proxy.addr, timeout=15)
    try:
        with client.acquire(pool, ttl=20) as s:
            out = ""
            gaps = []
            exit_ = None
            for event in s.run(COUNT):
                if isinstance(event, sandpool.Stdout):
                    out += event.text
                    if ("line 5\n" in out and cut_proxy.forwarded == 1) or (
                        "line 15\n" in out and cut_proxy.forwarded == 2
                    ):
                        cut_proxy.cut()
                elif isinstance(event, sandpool.Gap):
                    gaps.append(event)
                elif isinstance(event, sandpool.Exit):
                    exit_ = event
            assert cut_proxy.forwarded >= 3, f"reconnected after each cut ({cut_proxy.forwarded} connections)"
            assert out == EXPECTED
            assert gaps == []
            assert exit_ is not None and exit_.end_reason is sandpool.EndReason.EXITED and exit_.exit_code == 0
            # The lease lived through it.
            assert s.execute("print('still here')").stdout == "still here\n"
    finally:
        client.close()


def test_an_outage_longer_than_the_buffer_is_a_gap_of_the_exact_size(
    cut_proxy: CutProxy, make_pool: PoolFactory
) -> None:
    pool = make_pool(run_buffer_bytes=4096)
    code = (
        "import time, sys\nprint('start', flush=True)\ntime.sleep(1)\n"
        "for i in range(200):\n    sys.stdout.write(f'{i:04d}' + 'x' * 95 + '\\n')\n    sys.stdout.flush()\n"
        "time.sleep(0.5)\nprint('end', flush=True)\n"
    )

    async def main() -> sandpool.RunResult:
        async with sandpool.AsyncClient(cut_proxy.addr, timeout=15) as client:
            async with client.acquire(pool, ttl=20) as s:
                stream = s.run(code)
                # Chunks are not lines: the program's print is two writes
                # (unbuffered stdout), which may come as one chunk or two.
                seen = ""
                async for event in stream:
                    if isinstance(event, sandpool.Stdout):
                        seen += event.text
                    if seen == "start\n":
                        # Every connection drops, new ones fail for 3 s.
                        cut_proxy.refusing = True
                        cut_proxy.cut()
                        await asyncio.sleep(3)
                        cut_proxy.refusing = False
                        break
                return await stream.collect()

    result = asyncio.run(main())
    assert len(result.gaps) == 1, result.gaps
    gap = result.gaps[0]
    assert gap.stdout_bytes > 0 and gap.from_seq <= gap.to_seq, gap
    # What arrived ("start" before the outage, the tail after it) plus the
    # gap is everything the program wrote.
    total = len(result.stdout_raw) + gap.stdout_bytes
    assert result.stdout.endswith("end\n"), result.stdout
    assert result.end_reason is sandpool.EndReason.EXITED
    assert total == 6 + 200 * 100 + 4, (total, gap)


def test_cancelling_a_resumable_run_stops_it(make_pool: PoolFactory, client: sandpool.Client) -> None:
    pool = make_pool()
    with client.acquire(pool) as s:
        beat = "import time\nprint('up', flush=True)\nwhile True:\n    open('/tmp/beat', 'a').write('x')\n    time.sleep(0.05)\n"
        stream = s.run(beat, timeout=60)
        for event in stream:
            if isinstance(event, sandpool.Stdout):
                break
        stream.cancel()
        size = "import os\nprint(os.path.getsize('/tmp/beat'))"
        time.sleep(1)
        before = s.execute(size).stdout
        time.sleep(1)
        assert s.execute(size).stdout == before, "the cancelled run still writes"
