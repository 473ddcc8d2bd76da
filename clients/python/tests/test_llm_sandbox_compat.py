"""sandpool.llm_sandbox: llm-sandbox's container pooling API on a live
server. Each scenario follows a use of llm-sandbox's pooling documentation
(quick start, shared pool, threads, ThreadPoolExecutor, statistics, FAIL_FAST,
context-manager pool, artifacts) and only its imports differ."""

from __future__ import annotations

import base64
import json
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Dict, List, Tuple

import pytest

import sandpool
from sandpool.llm_sandbox import (
    ArtifactSandboxSession,
    ContainerError,
    SandboxBackend,
    SandboxSession,
    SandboxTimeoutError,
    SupportedLanguage,
)
from sandpool.llm_sandbox.data import ConsoleOutput, ExecutionResult, FileType, PlotOutput
from sandpool.llm_sandbox.pool import (
    ArtifactPooledSandboxSession,
    ExhaustionStrategy,
    PoolConfig,
    PoolExhaustedError,
    PooledSandboxSession,
    SessionNotOpenError,
    create_pool_manager,
)

from conftest import PNG_MAGIC, Server, build_wheel, wait_for

STATE_NAMES = {"initializing", "idle", "busy", "unhealthy", "removing"}


def gone(client: sandpool.Client, name: str) -> bool:
    return name not in [p.spec.name for p in client.list_pools()]


def test_pool_config_fields_defaults_and_validation() -> None:
    cfg = PoolConfig()
    assert cfg.model_dump() == {
        "max_pool_size": 10,
        "min_pool_size": 0,
        "idle_timeout": 300.0,
        "acquisition_timeout": 30.0,
        "health_check_interval": 60.0,
        "max_container_lifetime": 3600.0,
        "max_container_uses": None,
        "exhaustion_strategy": ExhaustionStrategy.WAIT,
        "enable_prewarming": True,
    }
    assert [s.value for s in ExhaustionStrategy] == ["fail_fast", "wait", "temporary"]
    assert PoolConfig(exhaustion_strategy="fail_fast").exhaustion_strategy is ExhaustionStrategy.FAIL_FAST
    with pytest.raises(ValueError, match="min_pool_size"):
        PoolConfig(max_pool_size=2, min_pool_size=3)
    for bad in ({"max_pool_size": 0}, {"min_pool_size": -1}, {"idle_timeout": 0}, {"acquisition_timeout": -1.0},
                {"health_check_interval": 0}, {"max_container_uses": 0}, {"exhaustion_strategy": "sometimes"}):
        with pytest.raises(ValueError):
            PoolConfig(**bad)  # type: ignore[arg-type]
    assert PoolConfig(idle_timeout=None, acquisition_timeout=None, max_container_lifetime=None).idle_timeout is None


def test_quick_start(server: Server) -> None:
    pool = create_pool_manager(
        backend="docker",
        config=PoolConfig(max_pool_size=3, min_pool_size=2, enable_prewarming=True),
        lang="python",
    )
    name = pool.name
    assert name.startswith("llmsb-python-")
    with SandboxSession(pool=pool, lang="python") as session:
        result = session.run("print('hello from a pooled container')")
        assert isinstance(result, ConsoleOutput)
        assert result.stdout == "hello from a pooled container\n"
        assert result.stderr == "" and result.exit_code == 0 and result.success()
        failing = session.run("raise ValueError('nope')")
        assert failing.exit_code == 1 and "ValueError: nope" in failing.stderr
        assert session.execute_command("echo hi there").stdout == "hi there\n"
    pool.close()
    assert pool.get_stats()["closed"] is True
    assert gone(server.client, name)


def test_shared_pool_with_libraries(server: Server, package_index: str) -> None:
    """``libraries=`` are installed into every container while the pool
    warms up. No public index is reachable here, so the pool's
    ``package_index_url`` (a sandpool addition) names a local one."""
    pool = create_pool_manager(
        backend="docker",
        config=PoolConfig(max_pool_size=3, min_pool_size=1),
        lang="python",
        libraries=["sandpooldemo==1.0"],
        package_index_url=package_index,
    )
    try:
        spec = server.client.get_pool(pool.name).spec
        assert list(spec.libraries) == ["sandpooldemo==1.0"]
        assert spec.package_index_url == package_index
        with SandboxSession(pool=pool, lang="python") as first:
            r1 = first.run("import sandpooldemo, pandas as pd; print(sandpooldemo.VALUE, pd.__name__)")
            assert r1.stdout == "42 pandas\n", r1.stderr
        with SandboxSession(pool=pool, lang="python") as second:
            r2 = second.run("import sandpooldemo, numpy as np; print(sandpooldemo.VALUE + int(np.arange(5).sum()))")
            assert r2.stdout == "52\n", r2.stderr
    finally:
        pool.close()


def test_libraries_that_cannot_be_installed_fail_the_pool_manager(server: Server, package_index: str) -> None:
    with pytest.raises(ContainerError) as err:
        create_pool_manager(
            backend="docker",
            config=PoolConfig(max_pool_size=1, min_pool_size=1),
            lang="python",
            libraries=["sandpool-no-such-package"],
            package_index_url=package_index,
        )
    assert "installing libraries" in str(err.value)
    assert "No matching distribution" in str(err.value) or "Could not find" in str(err.value), err.value
    assert [p.spec.name for p in server.client.list_pools() if p.spec.name.startswith("llmsb-")] == []


def test_runtime_configs_map_to_the_pool_runtime(server: Server) -> None:
    pool = create_pool_manager(
        backend="docker",
        config=PoolConfig(max_pool_size=1, min_pool_size=1),
        lang="python",
        runtime_configs={"mem_limit": "256m", "cpu_period": 100000, "cpu_quota": 50000},
    )
    try:
        rt = server.client.get_pool(pool.name).spec.runtime
        assert rt.mem_limit == str(256 * 1024 * 1024)
        assert (rt.cpu_period, rt.cpu_quota) == (100000, 50000)
        with SandboxSession(pool=pool, lang="python") as session:
            inspected = subprocess.run(
                ["docker", "inspect", "-f", "{{.HostConfig.Memory}} {{.HostConfig.CpuPeriod}} {{.HostConfig.CpuQuota}}",
                 session.container_id],
                check=True, capture_output=True, text=True, timeout=30,
            ).stdout.split()
            assert inspected == [str(256 * 1024 * 1024), "100000", "50000"]
    finally:
        pool.close()
    with pytest.raises(ValueError, match="privileged"):
        create_pool_manager(backend="docker", config=PoolConfig(max_pool_size=1), lang="python",
                            runtime_configs={"privileged": True})


def test_threads_share_one_pool_manager(server: Server) -> None:
    """20 tasks over 10 threads on a pool of 5: every result right, and no
    container is ever held by two sessions at once."""
    pool = create_pool_manager(backend="docker", config=PoolConfig(max_pool_size=5, min_pool_size=2), lang="python")
    holds: Dict[str, List[Tuple[float, float]]] = {}
    lock = threading.Lock()
    peak_busy = 0
    stop = threading.Event()

    def monitor() -> None:
        nonlocal peak_busy
        while not stop.is_set():
            peak_busy = max(peak_busy, pool.get_stats()["state_counts"]["busy"])
            time.sleep(0.02)

    def execute_task(task_id: int, code: str) -> dict:
        with SandboxSession(pool=pool, lang="python") as session:
            start = time.monotonic()
            result = session.run(code)
            end = time.monotonic()
            with lock:
                holds.setdefault(session.container_id, []).append((start, end))
            return {"task_id": task_id, "output": result.stdout, "success": result.exit_code == 0}

    watcher = threading.Thread(target=monitor, daemon=True)
    watcher.start()
    try:
        tasks = [(i, f"import time\ntime.sleep(0.05)\nprint('item {i}')") for i in range(20)]
        results = []
        with ThreadPoolExecutor(max_workers=10) as executor:
            futures = [executor.submit(execute_task, i, code) for i, code in tasks]
            for future in as_completed(futures):
                results.append(future.result())
        stats = pool.get_stats()
    finally:
        stop.set()
        watcher.join(timeout=5)
        pool.close()
    assert sorted(r["task_id"] for r in results) == list(range(20))
    for r in results:
        assert r["success"] and r["output"] == f"item {r['task_id']}\n", r
    assert 1 <= len(holds) <= 5
    for container, spans in holds.items():
        spans.sort()
        for (_, end), (start, _) in zip(spans, spans[1:]):
            assert start >= end, f"container {container[:12]} was leased twice at once"
    assert peak_busy <= 5
    assert stats["total_size"] <= 5


def test_plain_threads(server: Server) -> None:
    pool = create_pool_manager(backend="docker", config=PoolConfig(max_pool_size=5), lang="python")
    outputs: Dict[int, str] = {}

    def run_code(task_id: int) -> None:
        with SandboxSession(pool=pool, lang="python") as session:
            outputs[task_id] = session.run(f'print("Task {task_id} completed")').stdout

    try:
        threads = [threading.Thread(target=run_code, args=(i,)) for i in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    finally:
        pool.close()
    assert outputs == {i: f"Task {i} completed\n" for i in range(20)}


def test_get_stats_monitoring(server: Server) -> None:
    pool = create_pool_manager(backend="docker", config=PoolConfig(max_pool_size=4, min_pool_size=3), lang="python")
    try:
        stats = pool.get_stats()
        assert set(stats) == {"total_size", "max_size", "min_size", "state_counts", "closed"}
        assert set(stats["state_counts"]) == STATE_NAMES
        assert (stats["max_size"], stats["min_size"], stats["closed"]) == (4, 3, False)
        assert stats["total_size"] == 3 and stats["state_counts"]["idle"] == 3, stats
        assert sum(stats["state_counts"].values()) == stats["total_size"]
        with SandboxSession(pool=pool, lang="python") as session:
            session.run("print(1)")
            during = pool.get_stats()
            assert during["state_counts"]["busy"] == 1
            busy_ratio = during["state_counts"].get("busy", 0) / during["total_size"]
            assert 0 < busy_ratio <= 1
        # The released container is reset, then idle again.
        wait_for("the container to be idle again", lambda: pool.get_stats()["state_counts"]["idle"] == 3)
    finally:
        pool.close()
    closed = pool.get_stats()
    assert closed["closed"] is True and closed["total_size"] == 0


def test_fail_fast_raises_pool_exhausted_error(server: Server) -> None:
    pool = create_pool_manager(
        backend="docker",
        config=PoolConfig(max_pool_size=1, min_pool_size=1, exhaustion_strategy=ExhaustionStrategy.FAIL_FAST),
        lang="python",
    )
    try:
        with SandboxSession(pool=pool, lang="python") as holder:
            assert holder.run("print('holding')").stdout == "holding\n"
            t0 = time.monotonic()
            with pytest.raises(PoolExhaustedError) as err:
                with SandboxSession(lang="python", pool=pool) as session:
                    session.run("print('never')")
            assert time.monotonic() - t0 < 2
            assert err.value.pool_size == 1 and err.value.timeout is None
            assert "busy" in str(err.value)
            # Also catchable as the native sandpool error.
            with pytest.raises(sandpool.PoolExhausted):
                pool.acquire()
    finally:
        pool.close()


def test_wait_strategy_times_out_with_pool_exhausted_error(server: Server) -> None:
    pool = create_pool_manager(
        backend="docker",
        config=PoolConfig(max_pool_size=1, min_pool_size=1, acquisition_timeout=1.0),
        lang="python",
    )
    try:
        with SandboxSession(pool=pool, lang="python"):
            t0 = time.monotonic()
            with pytest.raises(PoolExhaustedError) as err:
                with SandboxSession(pool=pool, lang="python"):
                    pass
            assert 0.8 < time.monotonic() - t0 < 5
            assert err.value.timeout == 1.0
    finally:
        pool.close()


def test_temporary_strategy_goes_past_the_pool(server: Server) -> None:
    pool = create_pool_manager(
        backend="docker",
        config=PoolConfig(max_pool_size=1, min_pool_size=1, exhaustion_strategy="temporary"),
        lang="python",
    )
    try:
        with SandboxSession(pool=pool, lang="python") as a, SandboxSession(pool=pool, lang="python") as b:
            assert a.run("print('a')").stdout == "a\n"
            assert b.run("print('b')").stdout == "b\n"
            assert a.container_id != b.container_id
            assert pool.get_stats()["total_size"] == 1
            assert server.client.get_stats(pool.name).temporary_containers == 1
    finally:
        pool.close()


def test_context_manager_pool(server: Server) -> None:
    with create_pool_manager(
        backend=SandboxBackend.DOCKER, config=PoolConfig(max_pool_size=2, min_pool_size=1), lang=SupportedLanguage.PYTHON
    ) as pool:
        assert pool.lang == "python"
        name = pool.name
        with SandboxSession(pool=pool, lang="python") as session:
            assert session.run("print(2 ** 10)").stdout == "1024\n"
        assert pool.get_stats()["closed"] is False
    assert pool.get_stats()["closed"] is True
    assert gone(server.client, name)
    from sandpool.llm_sandbox.pool import PoolClosedError

    with pytest.raises(PoolClosedError):
        with SandboxSession(pool=pool, lang="python"):
            pass


def test_close_releases_sessions_still_open(server: Server) -> None:
    pool = create_pool_manager(backend="docker", config=PoolConfig(max_pool_size=2, min_pool_size=1), lang="python")
    name = pool.name
    session = SandboxSession(pool=pool, lang="python")
    session.open()
    assert session.run("print('open')").stdout == "open\n"
    pool.close()
    assert gone(server.client, name)
    with pytest.raises(sandpool.LeaseLost):
        session.run("print('after close')")


def test_pooled_session_details(server: Server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    with create_pool_manager(backend="docker", config=PoolConfig(max_pool_size=1, min_pool_size=1), lang="python") as pool:
        chunks: List[str] = []
        unopened = PooledSandboxSession(pool_manager=pool)
        with pytest.raises(SessionNotOpenError):
            unopened.run("print(1)")
        with PooledSandboxSession(pool_manager=pool, execution_timeout=1) as session:
            out = session.run("import time\nprint('ä', flush=True)\nprint('b')", on_stdout=chunks.append)
            assert out.stdout == "ä\nb\n" and "".join(chunks) == "ä\nb\n"
            with pytest.raises(SandboxTimeoutError):
                session.run("import time\ntime.sleep(10)")
            assert session.run("print('usable')", timeout=5).stdout == "usable\n"
            local = tmp_path / "in.txt"
            local.write_text("payload")
            session.copy_to_runtime(str(local), "/sandbox/in.txt")
            assert session.run("print(open('/sandbox/in.txt').read())").stdout == "payload\n"
            session.copy_from_runtime("/sandbox/in.txt", str(tmp_path / "out.txt"))
            assert (tmp_path / "out.txt").read_text() == "payload"
            res = session.execute_commands(["mkdir -p /sandbox/d", ("pwd", "/sandbox/d"), "false", "echo unreached"])
            assert res.exit_code == 1
            assert session.execute_command("pwd", workdir="/tmp").stdout == "/tmp\n"
            from sandpool.llm_sandbox import LibraryInstallationNotSupportedError

            with pytest.raises(LibraryInstallationNotSupportedError, match="lease_installs"):
                session.run("print(1)", libraries=["requests"])
            # A package file copied into the container installs for this session.
            wheel = build_wheel(tmp_path, value=7)
            session.copy_to_runtime(str(wheel), f"/sandbox/pkgs/{wheel.name}")
            out = session.run("import sandpooldemo; print(sandpooldemo.VALUE)", libraries=[f"/sandbox/pkgs/{wheel.name}"])
            assert out.stdout == "7\n", out.stderr


def test_session_without_pool_uses_the_servers_language_pool(server: Server) -> None:
    server.client.create_pool("python", max_pool_size=1, min_pool_size=1, wait_ready=True)
    try:
        with SandboxSession(lang="python") as session:
            assert session.run("print('default pool')").stdout == "default pool\n"
            assert session.backend_session.pool == "python"
    finally:
        server.client.delete_pool("python", wait=True)


PLOT_CODE = """
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
plt.plot([0, 1, 2], [0, 1, 4])
plt.title("squares")
plt.savefig("/sandbox/outputs/squares.png")
plt.savefig("/sandbox/outputs/squares.svg")
plt.close("all")  # no open figure left for a capture at exit
open("/sandbox/outputs/notes.txt", "w").write("not a plot")
print("saved")
"""


def test_artifact_session_returns_saved_figures_as_plots(server: Server) -> None:
    # matplotlib and numpy ship in the image (the docs' libraries=["matplotlib"]
    # would need a reachable package index).
    with create_pool_manager(backend="docker", config=PoolConfig(max_pool_size=1, min_pool_size=1),
                             lang="python") as pool:
        with ArtifactSandboxSession(pool=pool, enable_plotting=True) as session:
            result = session.run(PLOT_CODE)
            assert result.stdout == "saved\n", result.stderr
            assert sorted(p.format.value for p in result.plots) == ["png", "svg"]
            png = next(p for p in result.plots if p.format.value == "png")
            assert base64.b64decode(png.content_base64).startswith(PNG_MAGIC)
        with ArtifactPooledSandboxSession(pool_manager=pool, enable_plotting=True) as session:
            again = session.run(PLOT_CODE)
            assert len(again.plots) == 2, "each run reports its own plots"
            assert isinstance(again, ExecutionResult)
            # plt.show() is captured (as llm-sandbox captures it), as PNG.
            result = session.run(
                "import matplotlib.pyplot as plt\nimport numpy as np\n"
                "x = np.linspace(0, 6, 50)\nplt.plot(x, np.sin(x))\nplt.show()\n"
            )
            assert result.exit_code == 0, result.stderr
            assert result.stdout == "", "no capture banner in stdout"
            assert len(result.plots) == 1
            assert result.plots[0].format is FileType.PNG
            assert base64.b64decode(result.plots[0].content_base64).startswith(PNG_MAGIC)
            # Plots are per run: the next run reports only its own.
            assert session.run("print('no figure')").plots == []


TWO_FIGURES = """
import matplotlib.pyplot as plt
import numpy as np
x = np.linspace(0, 10, 50)
plt.plot(x, np.sin(x)); plt.title('shown')
plt.show()
plt.figure(); plt.plot(x, np.cos(x)); plt.title('left open')
print('plotted')
"""


def test_artifact_sandbox_session_returns_captured_figures(server: Server) -> None:
    """The llm-sandbox docs' artifact session: a figure shown and one left
    open come back as two PNG plots, as llm-sandbox's PlotOutput."""
    with create_pool_manager(backend="docker", config=PoolConfig(max_pool_size=1, min_pool_size=1),
                             lang="python") as pool:
        with ArtifactSandboxSession(pool=pool, lang="python", enable_plotting=True) as session:
            result = session.run(TWO_FIGURES)
            assert isinstance(result, ExecutionResult)
            assert (result.exit_code, result.stdout, result.stderr) == (0, "plotted\n", "")
            assert len(result.plots) == 2
            for plot in result.plots:
                assert isinstance(plot, PlotOutput)
                assert plot.format is FileType.PNG and plot.format.value == "png"
                assert base64.b64decode(plot.content_base64).startswith(PNG_MAGIC)
            assert result.plots[0].content_base64 != result.plots[1].content_base64
            payload = json.loads(result.to_json(include_plots=True))
            assert [p["format"] for p in payload["plots"]] == ["png", "png"]
        with ArtifactSandboxSession(pool=pool, lang="python", enable_plotting=False) as session:
            assert session.run(TWO_FIGURES).plots == []


def test_r_plots_come_back_too(server: Server) -> None:
    """llm-sandbox captures R base graphics and ggplot2 as well."""
    with create_pool_manager(backend="docker", config=PoolConfig(max_pool_size=1, min_pool_size=1),
                             lang=SupportedLanguage.R) as pool:
        with ArtifactSandboxSession(pool=pool, lang="r", enable_plotting=True) as session:
            result = session.run(
                "plot(1:10)\nlibrary(ggplot2)\n"
                "print(ggplot(data.frame(x = 1:3, y = c(2, 1, 3)), aes(x, y)) + geom_line())\ncat('done\\n')"
            )
            assert (result.exit_code, result.stdout) == (0, "done\n"), result.stderr
            assert [p.format for p in result.plots] == [FileType.PNG, FileType.PNG]
            assert all(base64.b64decode(p.content_base64).startswith(PNG_MAGIC) for p in result.plots)
