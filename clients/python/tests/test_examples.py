"""The scripts of examples/ run against the live server, and the package
keeps Python 3.9 syntax."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import PY_DIR, PoolFactory, Server, python_env

EXAMPLES = PY_DIR / "examples"


def run_example(server: Server, name: str, pool: str = "", *args: str) -> str:
    env = python_env(server)
    if pool:
        env["SANDPOOL_POOL"] = pool
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, f"{name} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_quickstart(server: Server, make_pool: PoolFactory) -> None:
    out = run_example(server, "quickstart.py", make_pool())
    assert re.search(r"^hello from 3\.\d+\.\d+$", out, re.M), out
    assert "exit code: 0 end reason: exited" in out


def test_streaming(server: Server, make_pool: PoolFactory) -> None:
    out = run_example(server, "streaming.py", make_pool())
    ticks = re.findall(r"^\[\s*(\d+\.\d)s\] tick (\d)$", out, re.M)
    assert [t[1] for t in ticks] == ["0", "1", "2"], out
    assert float(ticks[0][0]) < float(ticks[2][0]), "ticks must arrive as printed"
    assert "exit 0 after" in out
    assert "cancelled run ended: cancelled" in out


def test_files(server: Server, make_pool: PoolFactory) -> None:
    out = run_example(server, "files.py", make_pool())
    assert "rows: 2" in out and "total: 14" in out
    assert "artifact: total.txt text/plain 2 bytes" in out


def test_notebook(server: Server, make_pool: PoolFactory, tmp_path: Path) -> None:
    env_dir = tmp_path / "plots"
    env_dir.mkdir()
    out = run_example(server, "notebook.py", make_pool(), str(env_dir))
    assert "error: IndexError: list index out of range - the context survives" in out, out
    assert "3 rows plotted" in out
    assert re.search(r"^saved image/png \d{4,} bytes$", out, re.M), out
    assert "svg plots: 1 image/svg+xml" in out
    [saved] = list(env_dir.iterdir())
    assert saved.read_bytes().startswith(b"\x89PNG")


def test_async_fanout(server: Server, make_pool: PoolFactory) -> None:
    out = run_example(server, "async_fanout.py", make_pool(max_pool_size=3, min_pool_size=3))
    assert f"squares: {[n * n for n in range(12)]}" in out


def test_llm_sandbox_pool(server: Server) -> None:
    out = run_example(server, "llm_sandbox_pool.py")
    assert [line for line in out.splitlines() if line.startswith("task")] == [f"task {n} done" for n in range(6)]
    assert re.search(r"containers: [23]/3, states: \{'initializing': \d, 'idle': \d, 'busy': \d", out), out
    assert "closed: True" in out
    assert [p.spec.name for p in server.client.list_pools() if p.spec.name.startswith("llmsb-")] == []


HAND_WRITTEN = sorted(
    p for p in (PY_DIR / "src" / "sandpool").rglob("*.py") if not p.name.endswith(("_pb2.py", "_pb2_grpc.py"))
) + sorted(EXAMPLES.glob("*.py"))


@pytest.mark.parametrize("path", HAND_WRITTEN, ids=lambda p: str(p.relative_to(PY_DIR)))
def test_python39_syntax(path) -> None:  # type: ignore[no-untyped-def]
    """Hand-written modules parse as Python 3.9 (no match, no runtime X | Y:
    annotations are strings under ``from __future__ import annotations``)."""
    source = path.read_text()
    tree = ast.parse(source, filename=str(path), feature_version=(3, 9))
    annotated = any(
        isinstance(node, ast.AnnAssign) or (isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.returns)
        for node in ast.walk(tree)
    )
    if annotated and path.parent.name != "examples":
        assert "from __future__ import annotations" in source, f"{path.name} needs postponed annotations"
    assert not any(isinstance(node, getattr(ast, "Match", ())) for node in ast.walk(tree))
