"""The reference page's Kubernetes and Podman examples of llm-sandbox's
container pooling, run unchanged against a live sandpool server:
``create_pool_manager(backend="kubernetes", ..., client=k8s_client,
namespace="llm-sandbox")`` and ``create_pool_manager(backend="podman", ...,
client=podman_client)``.

The server's Kubernetes pools go to the Kubernetes test API server
(tests/k8s-apiserver, started here as a program: each pod is a real Docker
container). Its config allows one namespace besides its own,
``llm-sandbox``. Neither the kubernetes nor the podman package is installed
here: stand-ins carrying their type names take their place, which is all
the layer looks at (the sandpool server owns the engine; the object is not
used)."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import uuid
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

import pytest

import sandpool
from sandpool.llm_sandbox import SandboxSession
from sandpool.llm_sandbox.pool import PoolConfig, create_pool_manager
from sandpool.v1 import pool_pb2

from conftest import IMAGE, Server, debug_binary, wait_for

HOME_NAMESPACE = "sandpool-py"
"""The server's own namespace (``[kubernetes] namespace``)."""
EXTRA_NAMESPACE = "llm-sandbox"
"""The one further namespace its operator allows (``namespaces``)."""
DEFAULT_IMAGE = "sandpool/python:bookworm"
"""The server's image for python pools, which the examples use."""


def _stand_in(module: str, name: str) -> object:
    """An object whose type is ``module.name``, as an engine client of
    llm-sandbox's examples is."""
    kind = type(name, (), {"__module__": module})
    return kind()


class ApiServer:
    """The Kubernetes test API server as a process, with a kubeconfig for
    it. SIGTERM stops it and removes its containers."""

    def __init__(self, tmp: Path) -> None:
        self.kubeconfig = tmp / "kubeconfig"
        self.instance = f"pytest-k8s-{uuid.uuid4().hex[:8]}"
        self.log_path = tmp / "k8s-testserver.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [
                str(debug_binary("sandpool-k8s-testserver", "k8s-testserver")),
                "--kubeconfig",
                str(self.kubeconfig),
                "--namespace",
                HOME_NAMESPACE,
                "--instance-id",
                self.instance,
            ],
            stdout=subprocess.PIPE,
            stderr=self._log,
        )
        assert self.proc.stdout is not None
        # It prints its URL once it serves.
        readable, _, _ = select.select([self.proc.stdout], [], [], 60)
        line = self.proc.stdout.readline().decode().strip() if readable else ""
        if not line.startswith("http"):
            self.stop()
            raise RuntimeError(f"the test API server did not start:\n{self.log_path.read_text(errors='replace')}")
        self.url = line

    def pods(self, server_id: str) -> List[str]:
        """``namespace/name`` of the pods of sandpool server ``server_id``,
        as the test API server records them on their Docker containers."""
        out = subprocess.run(
            [
                "docker",
                "ps",
                "-a",
                "--filter",
                f"label=k8s-testserver.instance={self.instance}",
                "--filter",
                f"label=k8s-testserver.label.sandpool.server={server_id}",
                "--format",
                '{{.Label "k8s-testserver.pod"}}',
            ],
            check=True,
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
        return out.split()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()


@pytest.fixture(scope="module")
def k8s(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tuple[ApiServer, Server]]:
    """A test API server and a sandpool server whose Kubernetes pools go
    there; ``SANDPOOL_ADDR`` names the server, as the examples assume."""
    tmp = tmp_path_factory.mktemp("k8s")
    api = ApiServer(tmp)
    try:
        srv = Server(
            tmp,
            config_extra=(
                "[kubernetes]\n"
                f'kubeconfig = "{api.kubeconfig}"\n'
                f'namespace = "{HOME_NAMESPACE}"\n'
                f'namespaces = ["{EXTRA_NAMESPACE}"]\n'
            ),
        )
    except BaseException:
        api.stop()
        raise
    old_addr = os.environ.get("SANDPOOL_ADDR")
    os.environ["SANDPOOL_ADDR"] = srv.addr
    try:
        yield api, srv
    finally:
        if old_addr is None:
            os.environ.pop("SANDPOOL_ADDR", None)
        else:
            os.environ["SANDPOOL_ADDR"] = old_addr
        try:
            srv.stop()
            left = api.pods(srv.server_id)
        finally:
            api.stop()
        assert srv.proc.returncode == 0, f"sandpool-server exited with {srv.proc.returncode}:\n{srv.log_tail()}"
        assert left == [], f"pods of server {srv.server_id} left behind: {left}"


def test_the_kubernetes_example_runs_in_its_namespace(k8s: Tuple[ApiServer, Server]) -> None:
    api, srv = k8s
    k8s_client = _stand_in("kubernetes.client.api.core_v1_api", "CoreV1Api")

    # The reference page's example, as written there.
    with pytest.warns(UserWarning, match=r"ignores client=kubernetes\.client\.api\.core_v1_api\.CoreV1Api"):
        pool = create_pool_manager(
            backend="kubernetes",
            config=PoolConfig(
                max_pool_size=10,
                min_pool_size=2,
                health_check_interval=60.0,  # Pods are slower to start
            ),
            lang="python",
            client=k8s_client,
            namespace="llm-sandbox",
        )

    with pool:
        assert pool.namespace == EXTRA_NAMESPACE
        info = pool.client.get_pool(pool.name)
        assert info.spec.backend == pool_pb2.BACKEND_KUBERNETES
        assert info.spec.HasField("namespace") and info.spec.namespace == EXTRA_NAMESPACE
        assert pool.get_stats()["total_size"] == 2, pool.get_stats()
        warm = api.pods(srv.server_id)
        assert len(warm) == 2 and all(p.startswith(f"{EXTRA_NAMESPACE}/") for p in warm), warm

        with SandboxSession(pool=pool, lang="python") as session:
            out = session.run("import os, socket\nprint(socket.gethostname(), os.getuid())")
            assert out.exit_code == 0, out.stderr
            pod, uid = out.stdout.split()
            assert uid == "1000"
            # The pod the code ran in is in the namespace asked for, by the
            # container id the server gives and by the API server's record.
            assert session.container_id == f"{EXTRA_NAMESPACE}/{pod}"
            assert f"{EXTRA_NAMESPACE}/{pod}" in api.pods(srv.server_id)
    # close() deleted the pool and waited for its pods.
    assert pool.get_stats()["closed"] is True
    assert wait_for("the pool's pods to go", lambda: api.pods(srv.server_id) == [], timeout=30)


def test_a_namespace_the_operator_did_not_list_is_refused(k8s: Tuple[ApiServer, Server]) -> None:
    api, srv = k8s
    before = {p.spec.name for p in srv.client.list_pools()}
    with pytest.warns(UserWarning, match="ignores client="):
        with pytest.raises(sandpool.PermissionDenied) as refused:
            create_pool_manager(
                backend="kubernetes",
                config=PoolConfig(max_pool_size=2, min_pool_size=1),
                lang="python",
                client=_stand_in("kubernetes.client.api.core_v1_api", "CoreV1Api"),
                namespace="kube-system",
            )
    err = refused.value
    assert err.error_info is not None and err.error_info.reason == "POLICY_VIOLATION", err
    assert err.error_info.metadata["field"] == "namespace"
    # The allowed values are named: the server's own and the listed one.
    allowed = err.error_info.metadata["limit"]
    assert HOME_NAMESPACE in allowed and EXTRA_NAMESPACE in allowed, allowed
    assert [f for f, _ in err.details.field_violations] == ["namespace"]
    assert {p.spec.name for p in srv.client.list_pools()} == before
    assert api.pods(srv.server_id) == []


def test_without_namespace_a_kubernetes_pool_uses_the_servers(k8s: Tuple[ApiServer, Server]) -> None:
    api, srv = k8s
    with pytest.warns(UserWarning, match="ignores client="):
        pool = create_pool_manager(
            backend="kubernetes",
            config=PoolConfig(max_pool_size=1, min_pool_size=1),
            lang="python",
            client=_stand_in("kubernetes.client.api.core_v1_api", "CoreV1Api"),
        )
    with pool:
        assert not pool.client.get_pool(pool.name).spec.HasField("namespace")
        with SandboxSession(pool=pool, lang="python") as session:
            assert session.run("print(6 * 7)").stdout == "42\n"
            # A pod of the server's own namespace keeps its bare name as id.
            assert "/" not in session.container_id
            assert api.pods(srv.server_id) == [f"{HOME_NAMESPACE}/{session.container_id}"]


def test_namespace_is_ignored_with_a_warning_on_docker_and_refused_by_the_server(
    k8s: Tuple[ApiServer, Server],
) -> None:
    _, srv = k8s
    # llm-sandbox's Docker manager takes namespace= among its session
    # arguments and never reads it: the layer says so and drops it.
    with pytest.warns(UserWarning) as warned:
        pool = create_pool_manager(
            backend="docker",
            config=PoolConfig(max_pool_size=1, min_pool_size=1),
            lang="python",
            image=IMAGE,
            client=_stand_in("docker.client", "DockerClient"),
            namespace="llm-sandbox",
        )
    messages = [str(w.message) for w in warned]
    assert any("ignores client=docker.client.DockerClient" in m for m in messages), messages
    assert any("ignores namespace='llm-sandbox'" in m for m in messages), messages
    with pool:
        assert pool.namespace is None
        assert not pool.client.get_pool(pool.name).spec.HasField("namespace")
        with SandboxSession(pool=pool, lang="python") as session:
            assert session.run("print('on docker')").stdout == "on docker\n"
    # Asked of the server directly, a Docker pool with a namespace is refused.
    with pytest.raises(sandpool.InvalidArgument) as refused:
        srv.client.create_pool(f"ns-on-docker-{uuid.uuid4().hex[:6]}", backend="docker", namespace="llm-sandbox")
    assert [f for f, _ in refused.value.details.field_violations] == ["namespace"], refused.value


def test_a_sandpool_async_client_is_not_an_engine_client() -> None:
    # One of sandpool's own that the blocking manager cannot use is an
    # error, not an engine client to ignore.
    with pytest.raises(TypeError, match="sandpool.Client"):
        create_pool_manager(backend="docker", client=_stand_in("sandpool.aio", "AsyncClient"))


def _podman_socket() -> Optional[str]:
    host = os.environ.get("CONTAINER_HOST", "")
    for path in (host[len("unix://") :] if host.startswith("unix://") else "", "/run/podman/podman.sock"):
        if path and os.path.exists(path):
            return path
    return None


def test_the_podman_example_runs_on_podman(k8s: Tuple[ApiServer, Server]) -> None:
    missing = None
    if _podman_socket() is None:
        missing = "no podman socket"
    elif subprocess.run(["podman", "image", "exists", DEFAULT_IMAGE], capture_output=True, timeout=30).returncode:
        missing = f"podman has no {DEFAULT_IMAGE} (scripts/build-images.sh --podman python)"
    if missing is not None:
        if os.environ.get("SANDPOOL_REQUIRE_PODMAN"):
            raise AssertionError(f"SANDPOOL_REQUIRE_PODMAN is set but {missing}")
        pytest.skip(missing)
    _, srv = k8s
    podman_client = _stand_in("podman.client", "PodmanClient")

    # The reference page's example, as written there.
    with pytest.warns(UserWarning, match=r"ignores client=podman\.client\.PodmanClient"):
        pool = create_pool_manager(
            backend="podman",
            config=PoolConfig(max_pool_size=10),
            lang="python",
            client=podman_client,
        )

    with pool:
        assert pool.client.get_pool(pool.name).spec.backend == pool_pb2.BACKEND_PODMAN
        with SandboxSession(pool=pool, lang="python") as session:
            assert session.run("print('on podman')").stdout == "on podman\n"
            container = session.container_id
        # The container is Podman's, not Docker's.
        listed = subprocess.run(
            ["podman", "ps", "-a", "--no-trunc", "--format", "{{.ID}}", "--filter", f"label=sandpool.server={srv.server_id}"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.split()
        assert any(c.startswith(container) or container.startswith(c) for c in listed), (container, listed)
