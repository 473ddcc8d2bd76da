"""The sync client against a live server: sessions, runs, streaming, files."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import threading
import time
from pathlib import Path

import pytest

import sandpool
from sandpool import EndReason, Exit, LeaseState, Started, Stderr, Stdout

from conftest import PoolFactory, wait_for


def test_round_trip(client: sandpool.Client, make_pool: PoolFactory) -> None:
    pool = make_pool()
    with client.acquire(pool) as s:
        assert len(s.lease_id) == 32 and s.pool == pool
        assert s.container_id
        assert s.lease.language == "python" and s.lease.ttl == 30.0
        r = s.run_collect("import sys\nprint('out', 6 * 7)\nprint('err', file=sys.stderr)\nsys.exit(3)")
        assert r.stdout == "out 42\n"
        assert r.stderr == "err\n"
        assert r.exit_code == 3
        assert r.end_reason is EndReason.EXITED
        assert not r.ok
        assert r.duration > 0 and r.run_id
        ok = s.execute("print('fine')")
        assert ok.ok and ok.stdout == "fine\n"
        assert client.get_stats(pool).active_leases == 1
    stats = client.get_stats(pool)
    assert stats.active_leases == 0
    assert stats.counters.releases == 1


def test_stdin_env_working_dir_and_commands(client: sandpool.Client, make_pool: PoolFactory) -> None:
    pool = make_pool()
    with client.acquire(pool) as s:
        r = s.run_collect(
            "import os, sys\nprint(sys.stdin.read().upper(), os.environ['GREETING'], os.getcwd())",
            stdin="abc",
            env={"GREETING": "hello"},
            working_dir="/tmp",
        )
        assert r.stdout == "ABC hello /tmp\n", r
        argv = s.execute_command(["printf", "%s|", "a b", "$HOME"])
        assert argv.stdout == "a b|$HOME|", "argv must not go through a shell"
        shell = s.execute_command("echo $((6*7)) | tr 4 X")
        assert shell.stdout == "X2\n"
        missing = s.execute_command(["sh", "-c", "exit 7"])
        assert missing.exit_code == 7


def test_streaming_events_arrive_before_exit(client: sandpool.Client, make_pool: PoolFactory) -> None:
    pool = make_pool()
    code = "import sys, time\nprint('first')\nprint('oops', file=sys.stderr)\ntime.sleep(1.5)\nprint('second')\n"
    with client.acquire(pool) as s:
        arrivals = []
        for event in s.run(code):
            arrivals.append((time.monotonic(), event))
        kinds = [type(e).__name__ for _, e in arrivals]
        assert isinstance(arrivals[0][1], Started)
        assert isinstance(arrivals[-1][1], Exit)
        first = next(t for t, e in arrivals if isinstance(e, Stdout) and b"first" in e.data)
        exit_time = arrivals[-1][0]
        assert exit_time - first > 1.0, f"stdout was buffered to the end: {kinds}"
        err = b"".join(e.data for _, e in arrivals if isinstance(e, Stderr))
        assert err == b"oops\n"
        seqs = [e.seq for _, e in arrivals]
        assert seqs == list(range(1, len(seqs) + 1))


def test_timeout_and_cancel(client: sandpool.Client, make_pool: PoolFactory) -> None:
    pool = make_pool()
    with client.acquire(pool) as s:
        r = s.run_collect("import time\nprint('x', flush=True)\ntime.sleep(30)", timeout=1)
        assert r.end_reason is EndReason.TIMEOUT
        assert r.stdout == "x\n"
        assert "timeout" in r.message

        stream = s.run("import time\nprint('ready', flush=True)\ntime.sleep(30)")
        for event in stream:
            if isinstance(event, Stdout):
                break
        assert stream.run_id is not None
        t0 = time.monotonic()
        assert s.cancel(stream.run_id) is True
        result = stream.collect()
        assert result.end_reason is EndReason.CANCELLED
        assert time.monotonic() - t0 < 10
        # The container stays usable after both kills.
        assert s.execute("print(1)").stdout == "1\n"

        # Dropping the stream kills the run, too.
        with s.run("import time\nprint('go', flush=True)\ntime.sleep(30)") as dropped:
            next(iter(dropped))
        assert dropped.exit is None
        assert s.execute("print(2)").stdout == "2\n"


def test_release_is_idempotent_and_reports_state(client: sandpool.Client, make_pool: PoolFactory) -> None:
    pool = make_pool()
    s = client.acquire(pool)
    assert s.release() is LeaseState.ACTIVE
    assert s.release() is LeaseState.RELEASED
    with pytest.raises(sandpool.LeaseLost) as err:
        s.run_collect("print(1)")
    assert "released" in err.value.reason


def test_release_on_exception_in_with_body(client: sandpool.Client, make_pool: PoolFactory) -> None:
    pool = make_pool()
    with pytest.raises(KeyError, match="boom"):
        with client.acquire(pool) as s:
            assert client.get_stats(pool).active_leases == 1
            raise KeyError("boom")
    assert s.lost is not None
    stats = client.get_stats(pool)
    assert stats.active_leases == 0
    assert stats.counters.releases == 1


def test_dropped_session_is_released_by_its_finalizer(client: sandpool.Client, make_pool: PoolFactory) -> None:
    pool = make_pool()
    s = client.acquire(pool)
    assert client.get_stats(pool).active_leases == 1
    del s
    wait_for("the finalizer's release", lambda: client.get_stats(pool).active_leases == 0, timeout=10)
    assert client.get_stats(pool).counters.releases == 1


def test_upload_download_round_trip(client: sandpool.Client, make_pool: PoolFactory, tmp_path: Path) -> None:
    pool = make_pool()
    blob = os.urandom(3 * 1024 * 1024 + 17)  # several chunks
    with client.acquire(pool) as s:
        up = s.upload("/sandbox/data/blob.bin", blob)
        assert up.size == len(blob)
        assert up.sha256 == hashlib.sha256(blob).hexdigest()
        assert s.download("/sandbox/data/blob.bin") == blob
        check = s.execute("import hashlib\nprint(hashlib.sha256(open('data/blob.bin','rb').read()).hexdigest())")
        assert check.stdout.strip() == up.sha256

        local = tmp_path / "script.py"
        local.write_text("print('from a file')\n")
        s.upload("/sandbox/script.py", str(local), mode=0o600)
        assert s.execute_command(["python3", "script.py"]).stdout == "from a file\n"
        assert s.execute_command(["stat", "-c", "%a", "script.py"]).stdout.strip() == "600"

        with open(local, "rb") as f:
            s.upload("/tmp/copy.py", f)
        info = s.download_file("/tmp/copy.py", tmp_path / "back.py")
        assert info.kind == "file" and info.size == local.stat().st_size
        assert (tmp_path / "back.py").read_text() == "print('from a file')\n"

        tree = tmp_path / "tree"
        (tree / "sub").mkdir(parents=True)
        (tree / "a.txt").write_text("A")
        (tree / "sub" / "b.txt").write_text("B")
        s.upload_dir(tree, "/sandbox/tree")
        assert s.execute_command("cat /sandbox/tree/a.txt /sandbox/tree/sub/b.txt").stdout == "AB"
        archive = s.download("/sandbox/tree")
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            names = {m.name.lstrip("./") for m in tar.getmembers() if m.isfile()}
        assert names == {"a.txt", "sub/b.txt"}


def test_list_artifacts(client: sandpool.Client, make_pool: PoolFactory) -> None:
    pool = make_pool()
    with client.acquire(pool) as s:
        r = s.execute(
            "import os\nos.makedirs('/sandbox/outputs', exist_ok=True)\n"
            "open('/sandbox/outputs/table.csv','w').write('a,b\\n1,2\\n')\n"
        )
        assert r.ok, r.stderr
        arts = s.list_artifacts()
        assert [(a.name, a.mime_type, a.size) for a in arts] == [("table.csv", "text/csv", 8)]
        assert arts[0].path == "/sandbox/outputs/table.csv"


def test_list_artifacts_of_one_run(client: sandpool.Client, make_pool: PoolFactory) -> None:
    pool = make_pool()
    with client.acquire(pool) as s:
        r = s.execute("open('/sandbox/outputs/one.txt','w').write('1')")
        assert r.ok, r.stderr
        other = s.execute("open('/sandbox/outputs/two.txt','w').write('22')")
        arts = s.list_artifacts(run_id=r.run_id)
        assert [a.name for a in arts] == ["one.txt"]
        assert arts[0].run_id == r.run_id
        assert arts[0].sha256 == hashlib.sha256(b"1").hexdigest()
        assert [a.run_id for a in s.list_artifacts()] == [r.run_id, other.run_id]


def test_run_returns_artifacts(client: sandpool.Client, make_pool: PoolFactory) -> None:
    pool = make_pool()
    with client.acquire(pool) as s:
        r = s.execute("open('/sandbox/outputs/hello.txt','w').write('hello')")
        assert r.ok, r.stderr
        assert [(a.name, a.mime_type, a.data) for a in r.artifacts] == [("hello.txt", "text/plain", b"hello")]
        art = r.artifacts[0]
        assert (art.size, art.sha256, art.info.run_id) == (5, hashlib.sha256(b"hello").hexdigest(), r.run_id)
        assert not art.plot and r.plots == [] and r.files == [art]
        assert s.download(art.path) == b"hello"
        # A file bigger than one chunk comes back whole.
        big = s.execute(
            "import random\nrandom.seed(7)\n"
            "open('/sandbox/outputs/big.bin','wb').write(random.randbytes(3_000_000))"
        )
        assert big.ok, big.stderr
        [blob] = big.artifacts
        assert len(blob.data) == 3_000_000 == blob.size
        assert hashlib.sha256(blob.data).hexdigest() == blob.sha256


def test_session_used_from_threads(client: sandpool.Client, make_pool: PoolFactory) -> None:
    """One session may serve several runs at once from several threads."""
    pool = make_pool()
    outputs = {}
    with client.acquire(pool) as s:

        def work(i: int) -> None:
            outputs[i] = s.execute(f"print({i} * {i})").stdout

        threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    assert outputs == {i: f"{i * i}\n" for i in range(4)}
