"""The peer column of `sandpool-bench --bin report`: the same workloads
through llm-sandbox's container pooling and through sandpool's llm-sandbox
layer (``sandpool.llm_sandbox``), in one process, interleaved.

Run by the report with the venv it prepared; prints one JSON document on
stdout (progress goes to stderr). Every implementation is driven through
the same calls, ``SandboxSession(pool=pool, lang="python")`` and
``session.run(code)``, each one a whole Acquire + Run + Release as a caller
of the pooling API sees it:

- ``hello``: ``print('test')``, one session after another;
- ``numpy``: ``import numpy; print(numpy.__version__)``, the same way;
- ``concurrent``: the pooling page's thread example at the size the report
  asks for (by default 40 tasks from 10 threads on a pool of 5).

The floor is a raw engine exec (the docker SDK's ``exec_run``) of
``python3 -c CODE`` on the llm-sandbox pool's containers, interleaved with
the rest; its concurrent round uses the same threads over the same five
containers.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from importlib import metadata
from typing import Any, Callable, Dict, List, Tuple

HELLO = "print('test')"
NUMPY = "import numpy; print(numpy.__version__)"
# Where llm-sandbox's pooled sessions look for Python (its environment
# setup would make this venv; see prepare_llm_sandbox_containers).
LLM_SANDBOX_VENV = "/sandbox/.sandbox-venv"


def log(message: str) -> None:
    print(f"peer: {message}", file=sys.stderr, flush=True)


def wait_until(what: str, ready: Callable[[], bool], timeout: float = 600.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready after {timeout:.0f} s")
        time.sleep(0.1)


class Implementation:
    """A pool and the session factory that runs code on it."""

    def __init__(self, name: str, pool: Any, session_factory: Callable[..., Any]) -> None:
        self.name = name
        self.pool = pool
        self.session_factory = session_factory

    def task(self, code: str, expect: str) -> float:
        """One session: acquire, run, release; its wall time in ms."""
        return self.timed_task(code, expect)[0]

    def timed_task(self, code: str, expect: str) -> Tuple[float, float, float]:
        """One session: its wall time in ms, and when (perf_counter seconds)
        it asked for a container and got one."""
        started = time.perf_counter()
        with self.session_factory(pool=self.pool, lang="python") as session:
            granted = time.perf_counter()
            result = session.run(code)
        took = (time.perf_counter() - started) * 1e3
        if result.exit_code != 0 or result.stdout != expect:
            raise RuntimeError(
                f"{self.name}: {code!r} printed {result.stdout!r} "
                f"(exit {result.exit_code}): {result.stderr!r}"
            )
        return took, started, granted

    def close(self) -> None:
        self.pool.close()


class Floor:
    """A raw engine exec on the llm-sandbox pool's containers."""

    name = "floor"

    def __init__(self, containers: List[Any]) -> None:
        self.containers = containers
        self._next = 0
        self._lock = threading.Lock()

    def task(self, code: str, expect: str) -> float:
        return self.timed_task(code, expect)[0]

    def timed_task(self, code: str, expect: str) -> Tuple[float, float, float]:
        """A raw exec: no container to wait for (granted when asked)."""
        with self._lock:
            container = self.containers[self._next % len(self.containers)]
            self._next += 1
        started = time.perf_counter()
        exit_code, output = container.exec_run(["python3", "-c", code], demux=True)
        took = (time.perf_counter() - started) * 1e3
        stdout = (output[0] or b"").decode()
        if exit_code != 0 or stdout != expect:
            raise RuntimeError(f"floor: {code!r} printed {stdout!r} (exit {exit_code})")
        return took, started, started

    def close(self) -> None:
        pass


def llm_sandbox_pool(args: argparse.Namespace) -> Tuple[Implementation, List[Any]]:
    """llm-sandbox's Docker pool on the bench image, fully prewarmed; and
    its containers (docker SDK objects)."""
    import docker
    from llm_sandbox import SandboxSession
    from llm_sandbox.pool import PoolConfig, create_pool_manager

    label_key, _, label_value = args.label.partition("=")
    pool = create_pool_manager(
        backend="docker",
        config=PoolConfig(max_pool_size=args.pool_size, min_pool_size=args.pool_size),
        lang="python",
        image=args.image,
        # The image has no `python` command and containers here reach no
        # package index, so llm-sandbox's own setup (python -m venv, then
        # pip install --upgrade pip) cannot run; the venv it would make is
        # made below instead, with the image's python3.
        skip_environment_setup=True,
        # So that the report can find and remove them whatever happens.
        runtime_configs={"labels": {label_key: label_value}},
    )
    impl = Implementation("llm-sandbox", pool, SandboxSession)
    try:
        wait_until(
            "llm-sandbox pool",
            lambda: pool.get_stats()["state_counts"].get("idle", 0) >= args.pool_size,
        )
        engine = docker.from_env()
        containers = engine.containers.list(filters={"label": args.label})
        if len(containers) < args.pool_size:
            raise RuntimeError(f"llm-sandbox pool has {len(containers)} containers")
        for container in containers:
            exit_code, output = container.exec_run(
                # Without pip: the image's Debian python3 has no ensurepip,
                # and runs only need the venv's python.
                ["python3", "-m", "venv", "--without-pip", "--system-site-packages", LLM_SANDBOX_VENV]
            )
            if exit_code != 0:
                raise RuntimeError(f"making the venv failed: {output!r}")
        return impl, containers
    except BaseException:
        impl.close()
        raise


def sandpool_pool(name: str, addr: str, args: argparse.Namespace) -> Implementation:
    """A pool on a sandpool server, through sandpool's llm-sandbox layer."""
    from sandpool.llm_sandbox import SandboxSession
    from sandpool.llm_sandbox.pool import PoolConfig, create_pool_manager

    pool = create_pool_manager(
        backend="docker",
        config=PoolConfig(max_pool_size=args.pool_size, min_pool_size=args.pool_size),
        lang="python",
        image=args.image,
        addr=addr,
    )
    impl = Implementation(name, pool, SandboxSession)
    try:
        wait_until(
            f"{name} pool",
            lambda: pool.get_stats()["state_counts"].get("idle", 0) >= args.pool_size,
        )
        return impl
    except BaseException:
        impl.close()
        raise


def sequential(impls: List[Any], code: str, expect: str, n: int) -> Dict[str, List[float]]:
    """n tasks per implementation, one at a time, the order rotating."""
    times: Dict[str, List[float]] = {i.name: [] for i in impls}
    for round_ in range(n):
        for k in range(len(impls)):
            impl = impls[(round_ + k) % len(impls)]
            times[impl.name].append(impl.task(code, expect))
    return times


def concurrent(impl: Any, tasks: int, threads: int) -> Dict[str, Any]:
    """The thread example: `tasks` tasks from `threads` threads; with each
    task's latency, when it asked for a container and got one (ms from the
    round's start: the report checks that waiters were served in order)."""
    latencies: List[float] = []
    grants: List[Tuple[float, float]] = []
    lock = threading.Lock()
    started = time.perf_counter()

    def one(i: int) -> None:
        took, asked, granted = impl.timed_task(
            f'print("Processing item {i}")', f"Processing item {i}\n"
        )
        with lock:
            latencies.append(took)
            grants.append(((asked - started) * 1e3, (granted - started) * 1e3))

    with ThreadPoolExecutor(max_workers=threads) as executor:
        for future in [executor.submit(one, i) for i in range(tasks)]:
            future.result()
    return {
        "seconds": time.perf_counter() - started,
        "latencies_ms": latencies,
        "grants_ms": grants,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--image", required=True)
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--tasks", type=int, default=40)
    parser.add_argument("--threads", type=int, default=10)
    parser.add_argument("--pool-size", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--label", required=True, help="key=value put on llm-sandbox's containers")
    parser.add_argument(
        "--sandpool", action="append", default=[], help="NAME=ADDR of a sandpool server"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    impls: List[Any] = []
    try:
        log("prewarming llm-sandbox's pool")
        peer, containers = llm_sandbox_pool(args)
        impls.append(peer)
        impls.append(Floor(containers[: args.pool_size]))
        for spec in args.sandpool:
            name, _, addr = spec.partition("=")
            log(f"prewarming {name}'s pool")
            impls.append(sandpool_pool(name, addr, args))

        # What numpy prints is the image's version: learn it from the floor.
        _, output = containers[0].exec_run(["python3", "-c", NUMPY], demux=True)
        numpy_out = (output[0] or b"").decode()

        log("warming up")
        sequential(impls, HELLO, "test\n", 2)
        log("hello, one session at a time")
        hello = sequential(impls, HELLO, "test\n", args.iterations)
        log("numpy, one session at a time")
        numpy = sequential(impls, NUMPY, numpy_out, args.iterations)
        runs: Dict[str, List[Dict[str, Any]]] = {i.name: [] for i in impls}
        for round_ in range(args.rounds):
            for k in range(len(impls)):
                impl = impls[(round_ + k) % len(impls)]
                log(f"{impl.name}: {args.tasks} tasks from {args.threads} threads")
                runs[impl.name].append(concurrent(impl, args.tasks, args.threads))
    finally:
        for impl in impls:
            try:
                impl.close()
            except Exception as e:  # a close that fails must not hide the others
                log(f"closing {impl.name}: {e!r}")

    json.dump(
        {
            "llm_sandbox_version": metadata.version("llm-sandbox"),
            "implementations": [
                {
                    "name": name,
                    "hello_ms": hello[name],
                    "numpy_ms": numpy[name],
                    "concurrent": runs[name],
                }
                for name in hello
            ],
        },
        sys.stdout,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
