"""gRPC status codes become the client's own exceptions."""

from __future__ import annotations

import time

import grpc
import pytest

import sandpool

from conftest import IMAGE, PoolFactory, Server, wait_for


def test_unknown_pool_is_not_found(client: sandpool.Client) -> None:
    with pytest.raises(sandpool.NotFound) as err:
        client.acquire("no-such-pool")
    assert err.value.code is grpc.StatusCode.NOT_FOUND
    assert "no-such-pool" in err.value.message
    with pytest.raises(sandpool.NotFound):
        client.get_stats("no-such-pool")


def test_fail_fast_exhausted_is_pool_exhausted(client: sandpool.Client, make_pool: PoolFactory) -> None:
    pool = make_pool(max_pool_size=1, min_pool_size=1, exhaustion_strategy="fail_fast")
    with client.acquire(pool):
        t0 = time.monotonic()
        with pytest.raises(sandpool.PoolExhausted) as err:
            client.acquire(pool)
        assert time.monotonic() - t0 < 2.0, "FAIL_FAST must answer at once"
        assert err.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert client.get_stats(pool).counters.fail_fast_refusals == 1
    # Right after a release the container is still being reset: FAIL_FAST
    # waits for it instead of refusing.
    with client.acquire(pool) as s:
        assert s.execute("print(1)").ok
    assert client.get_stats(pool).counters.fail_fast_refusals == 1


def test_wait_exhausted_gives_up_after_acquisition_timeout(client: sandpool.Client, make_pool: PoolFactory) -> None:
    pool = make_pool(max_pool_size=1, min_pool_size=1, acquisition_timeout=1.0)
    with client.acquire(pool):
        t0 = time.monotonic()
        with pytest.raises(sandpool.PoolExhausted):
            client.acquire(pool)
        waited = time.monotonic() - t0
        assert 0.8 < waited < 5.0, waited
        # The call's own deadline bounds the wait, too.
        t0 = time.monotonic()
        with pytest.raises((sandpool.PoolExhausted, sandpool.DeadlineExceeded)):
            client.acquire(pool, wait=0.3)
        assert time.monotonic() - t0 < 2.0


def test_invalid_pool_config_is_invalid_argument(client: sandpool.Client) -> None:
    with pytest.raises(sandpool.InvalidArgument) as err:
        client.create_pool("bad-sizes", image=IMAGE, max_pool_size=1, min_pool_size=3)
    assert err.value.field == "config.min_pool_size"
    assert isinstance(err.value, ValueError)
    with pytest.raises(sandpool.InvalidArgument) as err:
        client.create_pool("Bad Name!", image=IMAGE)
    assert err.value.field == "name"
    with pytest.raises(sandpool.InvalidArgument) as err:
        client.create_pool("bad-runtime", image=IMAGE, runtime={"user": "0"})
    assert err.value.field == "runtime.user"
    # Found by the client before any call.
    with pytest.raises(sandpool.InvalidArgument) as err:
        client.create_pool("bad-strategy", image=IMAGE, exhaustion_strategy="sometimes")
    assert err.value.field == "config.exhaustion_strategy" and err.value.code is None
    assert [p.spec.name for p in client.list_pools() if p.spec.name.startswith("bad")] == []


def test_duplicate_pool_is_already_exists(client: sandpool.Client, make_pool: PoolFactory) -> None:
    pool = make_pool(min_pool_size=0)
    with pytest.raises(sandpool.AlreadyExists):
        client.create_pool(pool, image=IMAGE)


def test_file_errors_are_not_lease_errors(client: sandpool.Client, make_pool: PoolFactory) -> None:
    pool = make_pool()
    with client.acquire(pool) as s:
        with pytest.raises(sandpool.NotFound) as nf:
            s.download("/sandbox/missing.txt")
        assert not isinstance(nf.value, sandpool.LeaseLost)
        with pytest.raises(sandpool.InvalidArgument):
            s.upload("/etc/passwd", b"x")
        with pytest.raises(sandpool.NotFound) as run_nf:
            s.cancel("not-a-run")
        assert not isinstance(run_nf.value, sandpool.LeaseLost)
        ended = s.execute("print('done')")
        assert s.cancel(ended.run_id) is False  # a run that already ended
        # The session is still good.
        assert s.lost is None
        assert s.execute("print('alive')").stdout == "alive\n"


def test_unreachable_server_is_unavailable() -> None:
    with sandpool.Client("127.0.0.1:1", timeout=2) as c:
        with pytest.raises(sandpool.Unavailable):
            c.list_pools()


def test_bearer_token_is_sent_and_checked(server: Server) -> None:
    """The test server has no tokens configured; a server with tokens is
    started just for this test."""
    import os
    import signal
    import subprocess
    import tempfile

    from conftest import free_port, server_binary, wait_for

    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = os.path.join(tmp, "auth.toml")
        with open(cfg, "w") as f:
            f.write('shutdown_grace = 1\n[auth]\ntokens = ["s3cret"]\n')
        proc = subprocess.Popen(
            [str(server_binary()), "--listen", f"127.0.0.1:{port}", "--config", cfg, "--server-id", server.server_id + "-auth"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            good = sandpool.Client(f"127.0.0.1:{port}", token="s3cret", timeout=5)
            wait_for("the auth server", lambda: good.list_pools() == [], timeout=30)
            with sandpool.Client(f"127.0.0.1:{port}", timeout=5) as anonymous:
                with pytest.raises(sandpool.Unauthenticated):
                    anonymous.list_pools()
            with sandpool.Client(f"127.0.0.1:{port}", token="wrong", timeout=5) as wrong:
                with pytest.raises(sandpool.Unauthenticated):
                    wrong.list_pools()
            good.close()
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
        assert proc.returncode == 0


def test_deleted_pool_is_failed_precondition(client: sandpool.Client, make_pool: PoolFactory) -> None:
    pool = make_pool(max_pool_size=2, min_pool_size=1)
    with client.acquire(pool) as s:
        assert client.delete_pool(pool) == 1  # busy_remaining: our lease
        with pytest.raises(sandpool.FailedPrecondition) as err:
            client.acquire(pool)
        assert err.value.code is grpc.StatusCode.FAILED_PRECONDITION
        assert pool in err.value.message
        assert client.get_stats(pool).closed
    # The lease was revoked by the deletion; leaving the block is still clean.
    assert s.lost is not None


def test_expired_deadline_is_deadline_exceeded(client: sandpool.Client, make_pool: PoolFactory) -> None:
    pool = make_pool(min_pool_size=0)
    seen = []
    t0 = time.monotonic()
    with pytest.raises(sandpool.DeadlineExceeded) as err:
        for stats in client.watch_stats(pool, timeout=0.5):
            seen.append(stats)
    assert 0.4 < time.monotonic() - t0 < 5
    assert seen and seen[0].pool == pool, "the first stats come at once"
    assert isinstance(err.value, TimeoutError)
