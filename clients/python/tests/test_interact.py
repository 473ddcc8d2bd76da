"""Interactive runs (session.interact) against a live server: input written
while the program runs, end of input, signals, a terminal with its size,
resizes and Ctrl-C, in the blocking and the asyncio client."""

from __future__ import annotations

import asyncio
import signal
import time
from typing import Iterator, Union

import pytest

import sandpool
from sandpool import EndReason, Exit, Stderr, Stdout

from conftest import PoolFactory, Server


def read_until(events: Iterator[sandpool.RunEvent], seen: bytearray, needle: bytes, timeout: float = 20.0) -> None:
    """Reads events until the run's stdout (with a terminal, the one stream)
    holds ``needle``. Stderr is kept apart: without a terminal the two are
    separate pipes, and how their pieces interleave is up to the scheduler
    (a REPL's prompt on stderr can land inside a line of stdout)."""
    stderr = bytearray()
    deadline = time.monotonic() + timeout
    while needle not in seen:
        assert time.monotonic() < deadline, f"{needle!r} did not come; the run printed {bytes(seen)!r} (stderr {bytes(stderr)!r})"
        event = next(events)
        if isinstance(event, Stdout):
            seen += event.data
        elif isinstance(event, Stderr):
            stderr += event.data
        assert not isinstance(event, Exit), f"the run ended ({event}) before {needle!r}: {bytes(seen)!r} (stderr {bytes(stderr)!r})"


def exit_of(events: Iterator[sandpool.RunEvent]) -> Exit:
    for event in events:
        if isinstance(event, Exit):
            return event
    raise AssertionError("no exit event")


def test_a_repl_converses_and_ends_at_end_of_input(client: sandpool.Client, make_pool: PoolFactory) -> None:
    pool = make_pool()
    with client.acquire(pool) as s:
        with s.interact(command=["python3", "-u", "-i", "-q"], timeout=60) as run:
            events = iter(run)
            seen = bytearray()
            run.write("x = 21\n")
            run.write(b"print('answer', x * 2)\n")
            read_until(events, seen, b"answer 42")
            run.close_stdin()
            end = exit_of(events)
            assert (end.exit_code, end.end_reason) == (0, EndReason.EXITED)
        # The lease is as usable as before.
        assert s.run_collect("print('after')").stdout == "after\n"


def test_a_terminal_sized_resized_and_interrupted(client: sandpool.Client, make_pool: PoolFactory) -> None:
    pool = make_pool()
    with client.acquire(pool) as s:
        run = s.interact(command=["bash", "--norc", "--noprofile", "-i"], terminal=(24, 80), timeout=60)
        events = iter(run)
        seen = bytearray()
        run.write("stty size\r")
        read_until(events, seen, b"24 80")
        run.resize(30, 100)
        run.write("stty size\r")
        read_until(events, seen, b"30 100")
        run.write("sleep 50; echo slept\r")
        time.sleep(0.5)
        started = time.monotonic()
        run.write(b"\x03")
        run.write("echo after-$((6 * 7))\r")
        read_until(events, seen, b"after-42")
        assert time.monotonic() - started < 10
        assert b"\nslept\r\n" not in seen
        run.write("exit 4\r")
        end = exit_of(events)
        assert (end.exit_code, end.end_reason, end.stderr_bytes) == (4, EndReason.EXITED, 0)


def test_async_echo_and_signals(server: Server, make_pool: PoolFactory) -> None:
    pool = make_pool()

    async def main() -> None:
        async with sandpool.AsyncClient(server.addr) as client:
            async with client.acquire(pool) as s:
                async with s.interact(command=["cat"], timeout=60) as run:
                    out = bytearray()
                    for i in range(5):
                        line = f"line-{i}\n".encode()
                        await run.write(line)
                        while line not in out:
                            event = await asyncio.wait_for(run.__anext__(), 20)
                            if isinstance(event, Stdout):
                                out += event.data
                    await run.signal(signal.SIGTERM)
                    end = await asyncio.wait_for(run.collect(), 20)
                    assert (end.end_reason, end.exit_code, end.signal) == (EndReason.SIGNALED, 143, 15), end

                # A bad request ends the call with InvalidArgument.
                async with s.interact(command=["cat"], timeout=60) as run:
                    await run.signal(99)
                    with pytest.raises(sandpool.InvalidArgument, match="signal"):
                        await asyncio.wait_for(run.collect(), 20)

                # And the lease goes on.
                r = await s.run_collect("print('still')")
                assert r.stdout == "still\n"

    asyncio.run(main())


def test_refused_at_the_start(client: sandpool.Client, make_pool: PoolFactory) -> None:
    pool = make_pool()
    with client.acquire(pool) as s:
        bad: Union[sandpool.Interaction, None] = None
        with pytest.raises(sandpool.InvalidArgument, match="rows"):
            bad = s.interact(command=["cat"], terminal=(0, 80))
            bad.collect()
        assert s.run_collect("print('ok')").stdout == "ok\n"
