"""Plots, persistent contexts, per-lease libraries and setup, and lease errors
recognised by their ErrorInfo reason, against a live server."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import List, Optional

import grpc
import pytest

import sandpool
from sandpool import Artifact, Exit, PlotFormat
from sandpool import ErrorReason, LeaseState
from sandpool.errors import _BY_REASON, from_rpc_error, lease_lost_of
from sandpool.v1 import session_pb2

from conftest import DEMO_WHEEL, PNG_MAGIC, PoolFactory, Server, build_wheel, pretend_held, stop_keepalive

TWO_FIGURES = """
import matplotlib.pyplot as plt
import numpy as np
x = np.linspace(0, 10, 50)
plt.plot(x, np.sin(x)); plt.title('shown')
plt.show()
plt.figure(); plt.plot(x, np.cos(x)); plt.title('left open')
print('plotted')
"""


def test_two_figures_come_back_as_two_png_plots(client: sandpool.Client, make_pool: PoolFactory) -> None:
    pool = make_pool(max_pool_size=1)
    with client.acquire(pool) as s:
        stream = s.run(TWO_FIGURES)
        events = list(stream)
        assert isinstance(events[-1], Exit)
        assert any(isinstance(e, Artifact) for e in events[:-1]), "artifact events come before the exit"
        r = stream.collect()  # the same run, collected while it was iterated
        assert (r.stdout, r.stderr, r.exit_code) == ("plotted\n", "", 0)
        assert len(r.plots) == 2 and r.files == []
        for plot in r.plots:
            assert plot.data.startswith(PNG_MAGIC), plot.name
            assert plot.mime_type == "image/png" and plot.name.startswith("plots/")
            assert plot.size == len(plot.data)
            assert plot.sha256 == hashlib.sha256(plot.data).hexdigest()
            assert plot.info.run_id == r.run_id
        assert r.plots[0].data != r.plots[1].data

        svg = s.run_collect("import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.show()", plot_format="svg")
        [figure] = svg.plots
        assert figure.mime_type == "image/svg+xml" and figure.name.endswith(".svg")
        assert b"<svg" in figure.data
        pdf = s.run_collect("import matplotlib.pyplot as plt\nplt.plot([3, 2, 1])", plot_format=PlotFormat.PDF)
        assert [p.data[:5] for p in pdf.plots] == [b"%PDF-"], "a figure left open, as PDF"
        with pytest.raises(sandpool.InvalidArgument):
            s.run_collect("print(1)", plot_format="gif")

        # Plots of one run never show up in the next.
        assert s.run_collect("print('quiet')").artifacts == []
        listed = s.list_artifacts()
        assert sum(a.plot for a in listed) == 4
        assert {a.run_id for a in listed if a.plot} >= {r.run_id, svg.run_id, pdf.run_id}


def test_context_keeps_state_and_is_private_to_its_lease(client: sandpool.Client, make_pool: PoolFactory) -> None:
    pool = make_pool(max_pool_size=2, min_pool_size=2)
    with client.acquire(pool) as s, client.acquire(pool) as other:
        with s.context() as ctx:
            assert ctx.id and ctx.language == "python"
            first = ctx.run_collect("import math\nx = 41\ndef inc(v):\n    return v + 1\nprint('set')")
            assert (first.stdout, first.exit_code) == ("set\n", 0)
            streamed: List[bytes] = [e.data for e in ctx.run("print(inc(x), math.pi > 3)") if isinstance(e, sandpool.Stdout)]
            assert b"".join(streamed) == b"42 True\n"

            boom = ctx.run_collect("y = 1\nraise ValueError('nope')")
            assert boom.exit_code == 1 and boom.end_reason is sandpool.EndReason.EXITED
            assert "ValueError: nope" in boom.stderr
            assert ctx.run_collect("print(x, y)").stdout == "41 1\n", "the exception kept the context"

            # A plain run of the same lease is a separate process.
            assert "NameError" in s.run_collect("print(x)").stderr

            # Another lease cannot use the context.
            with pytest.raises(sandpool.NotFound) as err:
                sandpool.Context(other, ctx.id, "python").run_collect("print(x)")
            assert not isinstance(err.value, sandpool.LeaseLost)
            assert other.lost is None

            fig = ctx.run_collect("import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])")
            assert len(fig.plots) == 1 and fig.plots[0].data.startswith(PNG_MAGIC)
        # Leaving the block deleted the context.
        with pytest.raises(sandpool.NotFound):
            sandpool.Context(s, ctx.id, "python").run_collect("print(x)")
        ctx.delete()  # idempotent


def test_install_from_an_uploaded_wheel_lasts_for_the_lease(
    client: sandpool.Client, make_pool: PoolFactory, tmp_path: Path
) -> None:
    pool = make_pool(max_pool_size=1, min_pool_size=1)
    wheel = build_wheel(tmp_path)
    with client.acquire(pool) as s:
        container = s.container_id
        s.upload(f"/sandbox/pkgs/{DEMO_WHEEL}", str(wheel))
        done = s.install_libraries([f"/sandbox/pkgs/{DEMO_WHEEL}"])
        assert "Successfully installed sandpooldemo" in done.log, done.log
        assert done.duration > 0
        r = s.run_collect("import sandpooldemo; print(sandpooldemo.VALUE)")
        assert r.stdout == "42\n", r.stderr
        # Names need the network, which this pool does not allow on leases.
        with pytest.raises(sandpool.FailedPrecondition) as refused:
            s.install_libraries(["requests"])
        assert not isinstance(refused.value, sandpool.LeaseLost)
        assert "lease_installs" in refused.value.message
        with pytest.raises(sandpool.InvalidArgument):
            s.install_libraries(["numpy; rm -rf /"])
        with pytest.raises(TypeError):
            s.install_libraries("numpy")  # type: ignore[arg-type]
    with client.acquire(pool) as again:
        assert again.container_id == container
        gone = again.run_collect("import sandpooldemo")
        assert gone.exit_code == 1 and "ModuleNotFoundError" in gone.stderr


def test_acquire_places_env_and_files_for_the_lease_only(client: sandpool.Client, make_pool: PoolFactory) -> None:
    pool = make_pool(max_pool_size=1, min_pool_size=1)
    with client.acquire(
        pool,
        env={"PROJECT": "apollo"},
        files={"/sandbox/data/input.txt": "hello file", "/sandbox/bin/tool.sh": (b"echo tool\n", 0o755)},
    ) as s:
        container = s.container_id
        r = s.run_collect("import os\nprint(os.environ['PROJECT'], open('/sandbox/data/input.txt').read())")
        assert r.stdout == "apollo hello file\n", r.stderr
        assert s.execute_command("echo $PROJECT; stat -c %a /sandbox/bin/tool.sh; sh /sandbox/bin/tool.sh").stdout == (
            "apollo\n755\ntool\n"
        )
    with client.acquire(pool) as plain:
        assert plain.container_id == container
        r = plain.run_collect("import os\nprint(os.environ.get('PROJECT'), os.path.exists('/sandbox/data/input.txt'))")
        assert r.stdout == "None False\n"
    with pytest.raises(sandpool.InvalidArgument):
        client.acquire(pool, files={"/etc/evil": b"x"})
    with pytest.raises(sandpool.InvalidArgument):
        client.acquire(pool, env={"BAD NAME": "x"})
    assert client.get_stats(pool).active_leases == 0


# --- lease errors by ErrorInfo ------------------------------------------------


def _pb_field(number: int, data: bytes) -> bytes:
    """One length-delimited protobuf field (numbers < 16 here)."""
    assert number < 16
    size, length = len(data), b""
    while size >= 0x80:
        length += bytes([size & 0x7F | 0x80])
        size >>= 7
    return bytes([number << 3 | 2]) + length + bytes([size]) + data


def _status_with_error_info(reason: str, lease_id: str, **more: str) -> bytes:
    info = _pb_field(1, reason.encode()) + _pb_field(2, b"sandpool")
    for key, value in {"lease_id": lease_id, **more}.items():
        info += _pb_field(3, _pb_field(1, key.encode()) + _pb_field(2, value.encode()))
    anything = _pb_field(1, b"type.googleapis.com/google.rpc.ErrorInfo") + _pb_field(2, info)
    return _pb_field(2, b"gone") + _pb_field(3, anything)


class _FakeRpcError(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, message: str, trailer: Optional[bytes]) -> None:
        self._code, self._message, self._trailer = code, message, trailer

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._message

    def trailing_metadata(self) -> tuple:  # type: ignore[type-arg]
        return (("grpc-status-details-bin", self._trailer),) if self._trailer else ()


def test_lease_lost_is_told_by_error_info_not_by_the_message() -> None:
    lease = "ab" * 16
    # The reason decides, whatever the message says.
    err = _FakeRpcError(grpc.StatusCode.FAILED_PRECONDITION, "something else", _status_with_error_info("LEASE_ENDED", lease))
    lost = lease_lost_of(err, lease)
    assert lost is not None and lost.error_info is not None
    assert (lost.error_info.reason, lost.error_info.domain) == ("LEASE_ENDED", "sandpool")
    assert lost.error_info.metadata == {"lease_id": lease}
    assert lost.code is grpc.StatusCode.FAILED_PRECONDITION
    # Another lease's reason, or a NOT_FOUND without it that names the lease
    # only in passing, is not this lease being lost.
    assert lease_lost_of(err, "cd" * 16) is None
    plain = _FakeRpcError(grpc.StatusCode.NOT_FOUND, f"run 1 of lease {lease} does not exist", None)
    assert lease_lost_of(plain, lease) is None
    # A server without details: the message prefix is the fallback.
    old = _FakeRpcError(grpc.StatusCode.NOT_FOUND, f"lease {lease} does not exist", None)
    assert lease_lost_of(old, lease) is not None
    # Garbage in the trailer is ignored, the code still maps.
    bad = _FakeRpcError(grpc.StatusCode.NOT_FOUND, "x", b"\xff\xff\xff")
    assert isinstance(from_rpc_error(bad), sandpool.NotFound)


def test_every_error_reason_has_its_exception() -> None:
    """A reason added to errors.proto fails here until the client maps it."""
    assert set(_BY_REASON) == set(ErrorReason) - {ErrorReason.ERROR_REASON_UNSPECIFIED}


def test_the_typed_reason_maps_the_error() -> None:
    lease = "ab" * 16
    trailer = _status_with_error_info("LEASE_ENDED", lease, end="LEASE_STATE_EXPIRED")
    ended = _FakeRpcError(grpc.StatusCode.FAILED_PRECONDITION, f"lease {lease} expired", trailer)
    lost = lease_lost_of(ended, lease)
    assert lost is not None and lost.error_reason is ErrorReason.LEASE_ENDED
    assert lost.state is LeaseState.EXPIRED
    # Not on a call about that lease: the status code's class.
    plain = from_rpc_error(ended)
    assert type(plain) is sandpool.FailedPrecondition and plain.error_reason is ErrorReason.LEASE_ENDED
    unknown = from_rpc_error(
        _FakeRpcError(grpc.StatusCode.NOT_FOUND, "gone", _status_with_error_info("LEASE_NOT_FOUND", lease)), lease
    )
    assert isinstance(unknown, sandpool.LeaseLost) and unknown.state is LeaseState.NOT_FOUND
    full = _FakeRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, "full", _status_with_error_info("POOL_EXHAUSTED", ""))
    assert isinstance(from_rpc_error(full), sandpool.PoolExhausted)
    # A reason this client does not know: unspecified, its name kept, mapped
    # by the status code (and never a lease loss).
    newer = _FakeRpcError(grpc.StatusCode.NOT_FOUND, f"lease {lease} x", _status_with_error_info("SOMETHING_NEW", lease))
    err = from_rpc_error(newer, lease)
    assert type(err) is sandpool.NotFound and err.error_reason is ErrorReason.ERROR_REASON_UNSPECIFIED
    assert err.error_info is not None and err.error_info.reason == "SOMETHING_NEW"
    # No ErrorInfo: no reason.
    assert from_rpc_error(_FakeRpcError(grpc.StatusCode.UNAVAILABLE, "down", None)).error_reason is None


def test_a_gone_replica_loses_the_lease() -> None:
    """Behind a balancer, a lease whose replica died (or restarted) ends
    with REPLICA_GONE: a LeaseLost that says so."""
    lease = "a.0000000" + "ab" * 16
    trailer = _status_with_error_info("LEASE_ENDED", lease, end="LEASE_STATE_REPLICA_GONE", replica="a")
    gone = _FakeRpcError(grpc.StatusCode.FAILED_PRECONDITION, "replica \"a\" is gone", trailer)
    lost = lease_lost_of(gone, lease)
    assert lost is not None and lost.state is LeaseState.REPLICA_GONE
    assert LeaseState.from_pb(9) is LeaseState.REPLICA_GONE


def test_lease_errors_from_the_server_carry_error_info(client: sandpool.Client, make_pool: PoolFactory) -> None:
    pool = make_pool()
    unknown = "0" * 32
    try:
        list(client.sessions.Run(session_pb2.RunRequest(lease_id=unknown, code=session_pb2.Code(text="1")), timeout=10))
    except grpc.RpcError as e:
        err = from_rpc_error(e)
    else:
        raise AssertionError("a run on an unknown lease must fail")
    assert isinstance(err, sandpool.NotFound) and err.error_info is not None
    assert (err.error_info.reason, err.error_info.domain) == ("LEASE_NOT_FOUND", "sandpool")
    assert err.error_info.metadata["lease_id"] == unknown

    s = client.acquire(pool)
    client.sessions.Release(session_pb2.ReleaseRequest(lease_id=s.lease_id), timeout=5)
    # Pretend the keepalive has not noticed yet, so that the call reaches the
    # server, whose answer alone must make it LeaseLost.
    stop_keepalive(s)
    pretend_held(s)
    with pytest.raises(sandpool.LeaseLost) as lost:
        s.upload("/sandbox/x.txt", b"x")
    assert lost.value.error_info is not None and lost.value.error_info.reason == "LEASE_ENDED"
    assert lost.value.code is grpc.StatusCode.FAILED_PRECONDITION
    assert lost.value.lease_id == s.lease_id and "released" in lost.value.reason
    with pytest.raises(sandpool.LeaseLost):
        s.run_collect("print(1)")  # from then on without a round trip
    assert s.release() is sandpool.LeaseState.RELEASED


def test_async_plots_context_install_and_setup(server: Server, make_pool: PoolFactory, tmp_path: Path) -> None:
    pool = make_pool(max_pool_size=1, min_pool_size=1)
    wheel = build_wheel(tmp_path, value=9)

    async def main() -> None:
        async with sandpool.AsyncClient(server.addr) as client:
            async with client.acquire(pool, env={"WHO": "async"}, files={"/sandbox/in.txt": "data"}) as s:
                r = await s.run_collect(TWO_FIGURES, plot_format="svg")
                assert [p.mime_type for p in r.plots] == ["image/svg+xml"] * 2, r.stderr
                async with s.context() as ctx:
                    await ctx.run_collect("import os\ntotal = len(open('/sandbox/in.txt').read())")
                    out = [e async for e in ctx.run("print(total, os.environ['WHO'])")]
                    assert b"".join(e.data for e in out if isinstance(e, sandpool.Stdout)) == b"4 async\n"
                    crash = await ctx.run_collect("1 / 0")
                    assert crash.exit_code == 1 and "ZeroDivisionError" in crash.stderr
                    assert (await ctx.run_collect("print(total * 2)")).stdout == "8\n"
                with pytest.raises(sandpool.NotFound):
                    await sandpool.AsyncContext(s, ctx.id, "python").run_collect("print(total)")
                await s.upload(f"/sandbox/{DEMO_WHEEL}", wheel.read_bytes())
                done = await s.install_libraries([f"/sandbox/{DEMO_WHEEL}"])
                assert "sandpooldemo" in done.log
                assert (await s.run_collect("import sandpooldemo as d; print(d.VALUE)")).stdout == "9\n"

    asyncio.run(main())
