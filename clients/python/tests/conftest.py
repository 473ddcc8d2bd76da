"""Test harness: one real sandpool-server for the whole run, on a free port of
127.0.0.1, with a unique server id, on the real Docker engine. At the end the
server is stopped with SIGTERM and the engine must hold no container
labelled with that id."""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, TypeVar

import pytest

import sandpool

T = TypeVar("T")

PY_DIR = Path(__file__).resolve().parents[1]
REPO = PY_DIR.parents[1]
IMAGE = os.environ.get("SANDPOOL_TEST_PYTHON_IMAGE", "sandpool/python:bookworm")


def wait_for(what: str, check: Callable[[], Optional[T]], timeout: float = 20.0, every: float = 0.05) -> T:
    """Polls ``check`` until it returns something other than None/False."""
    until = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            value = check()
        except Exception as e:  # noqa: BLE001 - reported on timeout
            value, last = None, e
        if value is not None and value is not False:
            return value
        if time.monotonic() > until:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last error: {last!r})")
        time.sleep(every)


def stop_keepalive(session: sandpool.Session) -> None:
    """Stops a session's keepalive, as a client process that stalls would."""
    from sandpool.client import _LOOP

    _LOOP.run(session._aio._keeper.stop())


def pretend_held(session: sandpool.Session) -> None:
    """Makes the session believe its lease is still held, so that its next
    call reaches the server."""
    keeper = session._aio._keeper
    keeper._lost = None
    keeper._confirmed_until = float("inf")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def containers_of(server_id: str) -> List[str]:
    out = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label=sandpool.server={server_id}"],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout
    return out.split()


def debug_binary(package: str, name: str) -> Path:
    """The workspace's debug build of binary ``name`` of ``package``, built
    first if it is not there."""
    target = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
    binary = target / "debug" / name
    if not binary.exists():
        subprocess.run(["cargo", "build", "-p", package, "--bin", name], cwd=REPO, check=True)
    return binary


def server_binary() -> Path:
    explicit = os.environ.get("SANDPOOL_SERVER_BIN")
    if explicit:
        return Path(explicit)
    return debug_binary("sandpool-server", "sandpool-server")


class Server:
    """A sandpool-server process. ``tls_args`` are extra TLS flags
    (``--tls-cert``, ``--tls-key``, ``--tls-client-ca``); ``client_kwargs``
    are the arguments of :class:`sandpool.Client` that reach it (``tls``,
    ``addr``, ``token``), used for the readiness probe and ``self.client``.
    ``port`` is the port to listen on (default: a free one), for replicas
    whose peer list names every address before they start."""

    def __init__(
        self,
        tmp: Path,
        tls_args: Sequence[str] = (),
        client_kwargs: Optional[Dict[str, Any]] = None,
        config_extra: str = "",
        env: Optional[Dict[str, str]] = None,
        port: Optional[int] = None,
    ) -> None:
        self.port = port if port is not None else free_port()
        self.addr = f"127.0.0.1:{self.port}"
        self.server_id = f"pytest-py-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        config = tmp / "sandpool.toml"
        # No pools (unless `config_extra` has some): every test creates its
        # own through CreatePool.
        config.write_text("shutdown_grace = 2\n" + config_extra)
        self.log_path = tmp / "server.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [
                str(server_binary()),
                "--listen",
                self.addr,
                "--config",
                str(config),
                "--server-id",
                self.server_id,
                *tls_args,
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "info"), **(env or {})},
        )
        self.client_kwargs: Dict[str, Any] = {"addr": self.addr, **(client_kwargs or {})}
        self.client = sandpool.Client(timeout=10, **self.client_kwargs)

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sandpool-server exited with {self.proc.returncode}:\n{self.log_tail()}")
            self.client.list_pools()
            return True

        try:
            wait_for("the server to answer ListPools", ready, timeout=30)
        except BaseException:
            self.client.close()
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self._log.close()
            raise

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> None:
        self.client.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"sandpool-server ignored SIGTERM for 40s:\n{self.log_tail()}")
        self._log.close()


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("server"))
    old_addr = os.environ.get("SANDPOOL_ADDR")
    os.environ["SANDPOOL_ADDR"] = srv.addr
    try:
        yield srv
    finally:
        if old_addr is None:
            os.environ.pop("SANDPOOL_ADDR", None)
        else:
            os.environ["SANDPOOL_ADDR"] = old_addr
        stop_checked(srv)


def stop_checked(srv: Server) -> None:
    """Stops the server; it must exit cleanly and leave no container."""
    srv.stop()
    rc = srv.proc.returncode
    left = containers_of(srv.server_id)
    assert rc == 0, f"sandpool-server exited with {rc}:\n{srv.log_tail()}"
    assert left == [], f"containers of server {srv.server_id} left behind: {left}"


@pytest.fixture
def client(server: Server) -> Iterator[sandpool.Client]:
    c = sandpool.Client(server.addr, timeout=15)
    try:
        yield c
    finally:
        c.close()


PoolFactory = Callable[..., str]


@pytest.fixture
def make_pool(server: Server, request: pytest.FixtureRequest) -> Iterator[PoolFactory]:
    """Creates uniquely named pools (small, warm) and deletes them after the
    test, waiting until their containers are gone."""
    admin = sandpool.Client(server.addr, timeout=30)
    names: List[str] = []
    base = "".join(ch if ch.isalnum() else "-" for ch in request.node.name.lower())[:30].strip("-")

    def make(**kwargs: Any) -> str:
        name = kwargs.pop("name", None) or f"{base}-{uuid.uuid4().hex[:6]}"
        kwargs.setdefault("image", IMAGE)
        kwargs.setdefault("max_pool_size", 2)
        kwargs.setdefault("min_pool_size", 1)
        kwargs.setdefault("wait_ready", True)
        admin.create_pool(name, **kwargs)
        names.append(name)
        return name

    try:
        yield make
    finally:
        for name in names:
            try:
                admin.delete_pool(name, wait=True, timeout=60)
            except sandpool.NotFound:
                pass
        admin.close()


def python_env(server: Server) -> Dict[str, str]:
    """Environment for a child Python process that uses the package."""
    env = dict(os.environ)
    env["SANDPOOL_ADDR"] = server.addr
    env["PYTHONPATH"] = os.pathsep.join([str(PY_DIR / "src"), env.get("PYTHONPATH", "")])
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_python(server: Server, args: List[str], timeout: float = 120) -> "subprocess.CompletedProcess[str]":
    return subprocess.run(
        [sys.executable, *args],
        env=python_env(server),
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=str(PY_DIR),
    )


PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

DEMO_WHEEL = "sandpooldemo-1.0-py3-none-any.whl"


def build_wheel(directory: Path, value: int = 42) -> Path:
    """A tiny pure-Python wheel of package ``sandpooldemo`` (``VALUE``),
    built with zipfile: no build tools, no index."""
    import base64
    import hashlib
    import zipfile

    files = {
        "sandpooldemo/__init__.py": f"VALUE = {value}\n".encode(),
        "sandpooldemo-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: sandpooldemo\nVersion: 1.0\n",
        "sandpooldemo-1.0.dist-info/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: sandpool-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    record = ""
    for name, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record += f"{name},sha256={digest},{len(data)}\n"
    record += "sandpooldemo-1.0.dist-info/RECORD,,\n"
    files["sandpooldemo-1.0.dist-info/RECORD"] = record.encode()
    path = directory / DEMO_WHEEL
    with zipfile.ZipFile(path, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
    return path


def bridge_gateway() -> str:
    """The host's address on Docker's default bridge, where containers that
    install libraries (on the pool's install network) reach the host."""
    listed = subprocess.run(
        ["docker", "network", "inspect", "bridge", "--format", "{{range .IPAM.Config}}{{.Gateway}}{{end}}"],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout.strip()
    if listed:
        return listed
    # Docker 20.10 leaves the default bridge's gateway out of IPAM.
    out = subprocess.run(["ip", "-4", "-o", "addr", "show", "docker0"], capture_output=True, text=True, timeout=10).stdout
    words = out.split()
    return words[words.index("inet") + 1].split("/")[0]


@pytest.fixture
def package_index(tmp_path: Path) -> Iterator[str]:
    """A PEP 503 "simple" index with the demo wheel, served on all
    interfaces; yields its URL as containers on the bridge see it."""
    import functools
    import http.server
    import threading

    root = tmp_path / "index"
    (root / "simple" / "sandpooldemo").mkdir(parents=True)
    build_wheel(root)
    (root / "simple" / "sandpooldemo" / "index.html").write_text(
        f'<html><body><a href="../../{DEMO_WHEEL}">{DEMO_WHEEL}</a></body></html>\n'
    )

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("0.0.0.0", 0), functools.partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{bridge_gateway()}:{httpd.server_address[1]}/simple"
    finally:
        httpd.shutdown()
        httpd.server_close()


class BlackholeProxy:
    """A TCP proxy from 127.0.0.1 to ``target``. After :meth:`blackhole` it
    forwards nothing more in either direction and accepts new connections
    without forwarding them, yet closes nothing (no FIN, no RST): a network
    that silently drops everything."""

    def __init__(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        self._target: Tuple[str, int] = (host, int(port))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.addr = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self._silent = threading.Event()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._sockets: List[socket.socket] = [self._listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def blackhole(self) -> None:
        self._silent.set()

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            for s in self._sockets:
                try:
                    s.close()
                except OSError:
                    pass

    def _keep(self, s: socket.socket) -> None:
        with self._lock:
            self._sockets.append(s)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self._keep(conn)
            if self._silent.is_set():
                continue  # held open, never forwarded
            upstream = socket.create_connection(self._target)
            self._keep(upstream)
            threading.Thread(target=self._pump, args=(conn, upstream), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, conn), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        while True:
            try:
                data = src.recv(65536)
                if not data:
                    dst.shutdown(socket.SHUT_WR)
                    return
                if self._silent.is_set():
                    self._closed.wait()  # hold the data and the connection
                    return
                dst.sendall(data)
            except OSError:
                return


class CutProxy:
    """A TCP proxy from 127.0.0.1 to ``target`` whose :meth:`cut` resets
    every open connection (a network blip, a load balancer restarting);
    while ``refusing`` it closes new connections at once (an outage)."""

    def __init__(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        self._target: Tuple[str, int] = (host, int(port))
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.addr = f"127.0.0.1:{self._listener.getsockname()[1]}"
        self.refusing = False
        self.forwarded = 0
        self._lock = threading.Lock()
        self._open: List[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def cut(self) -> None:
        with self._lock:
            open_, self._open = self._open, []
        for s in open_:
            try:
                # RST rather than FIN: the peer sees a reset connection.
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                # close() alone does not end a socket that a pump thread is
                # blocked reading: the server would notice the cut only when
                # it next wrote (mid-burst, so that the test's gap came or
                # not by timing). shutdown() wakes the reader and ends the
                # connection now.
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
            except OSError:
                pass

    def close(self) -> None:
        self._listener.close()
        self.cut()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            if self.refusing:
                conn.close()
                continue
            try:
                upstream = socket.create_connection(self._target)
            except OSError:
                conn.close()
                continue
            with self._lock:
                self.forwarded += 1
                self._open += [conn, upstream]
            threading.Thread(target=self._pump, args=(conn, upstream), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, conn), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        while True:
            try:
                data = src.recv(65536)
                if not data:
                    dst.shutdown(socket.SHUT_WR)
                    return
                dst.sendall(data)
            except OSError:
                return


@pytest.fixture
def cut_proxy(server: Server) -> Iterator[CutProxy]:
    p = CutProxy(server.addr)
    try:
        yield p
    finally:
        p.close()


@pytest.fixture
def proxy(server: Server) -> Iterator[BlackholeProxy]:
    p = BlackholeProxy(server.addr)
    try:
        yield p
    finally:
        p.close()
