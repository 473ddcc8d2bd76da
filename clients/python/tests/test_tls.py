"""TLS and mutual TLS against the real server, with certificates made for the
test by the openssl CLI: a CA, a server certificate for localhost and
127.0.0.1, and client certificates for alice and bob. Encrypted calls work,
plaintext ones fail fast, and with client certificates each certificate is an
identity that owns its leases."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Iterator, Optional, Sequence, Tuple

import grpc
import pytest

import sandpool
from sandpool.errors import lease_lost_of
from sandpool.v1 import session_pb2

from conftest import IMAGE, Server, stop_checked, wait_for

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")


def openssl(directory: Path, *args: str) -> None:
    out = subprocess.run(["openssl", *args], cwd=directory, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, f"openssl {args}: {out.stderr}"


def make_certificates(directory: Path, clients: Sequence[str]) -> None:
    """ca.pem/.key, server.pem/.key (localhost, 127.0.0.1) and NAME.pem/.key
    for each client, all signed by the CA (P-256 keys: quick to make)."""
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl(directory, "req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1",
            "-subj", "/CN=sandpool-test-ca")

    def sign(name: str, ext: str) -> None:
        openssl(directory, "req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}")
        (directory / f"{name}.ext").write_text(ext)
        openssl(directory, "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-out", f"{name}.pem", "-days", "1", "-extfile", f"{name}.ext")

    sign("server", "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    for client in clients:
        sign(client, "extendedKeyUsage=clientAuth\n")


def credentials(certs: Path, identity: Optional[str] = None) -> grpc.ChannelCredentials:
    """Trusts the test CA; with ``identity``, presents that client certificate."""
    ca = (certs / "ca.pem").read_bytes()
    if identity is None:
        return grpc.ssl_channel_credentials(root_certificates=ca)
    return grpc.ssl_channel_credentials(
        root_certificates=ca,
        private_key=(certs / f"{identity}.key").read_bytes(),
        certificate_chain=(certs / f"{identity}.pem").read_bytes(),
    )


@pytest.fixture(scope="module")
def certs() -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="sandpool-py-tls-"))
    try:
        make_certificates(directory, ["alice", "bob"])
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def start(certs: Path, name: str, client_ca: bool, identity: Optional[str], config_extra: str = "") -> Server:
    tmp = certs / name
    tmp.mkdir()
    flags = ["--tls-cert", str(certs / "server.pem"), "--tls-key", str(certs / "server.key")]
    if client_ca:
        flags += ["--tls-client-ca", str(certs / "ca.pem")]
    return Server(tmp, flags, {"tls": credentials(certs, identity)}, config_extra)


def warm_pool(srv: Server) -> str:
    name = f"tls-{uuid.uuid4().hex[:6]}"
    srv.client.create_pool(name, image=IMAGE, max_pool_size=2, min_pool_size=1, wait_ready=True)
    return name


@pytest.fixture(scope="module")
def tls_server(certs: Path) -> Iterator[Tuple[Server, str]]:
    """A TLS server (no client certificates) and a warm pool on it."""
    srv = start(certs, "tls", client_ca=False, identity=None)
    try:
        yield srv, warm_pool(srv)
    finally:
        stop_checked(srv)


@pytest.fixture(scope="module")
def mtls_server(certs: Path) -> Iterator[Tuple[Server, str]]:
    """A mutual-TLS server whose ``client`` is alice's, and a warm pool on it.
    Each certificate is a tenant of its own, and a pool a tenant creates is
    its own: the pool alice and bob share is the operator's (config file)."""
    name = f"tls-{uuid.uuid4().hex[:6]}"
    pool = f'[[pools]]\nname = "{name}"\nlanguage = "python"\nimage = "{IMAGE}"\nmin_pool_size = 1\nmax_pool_size = 2\n'
    srv = start(certs, "mtls", client_ca=True, identity="alice", config_extra=pool)
    try:
        wait_for("the shared pool to warm", lambda: srv.client.get_stats(name).state_counts.idle >= 1, timeout=60)
        yield srv, name
    finally:
        stop_checked(srv)


def test_tls_round_trip_by_name_and_by_ip(tls_server: Tuple[Server, str], certs: Path) -> None:
    srv, pool = tls_server
    # By name (the certificate's DNS SAN) and by address (its IP SAN).
    for addr in (f"localhost:{srv.port}", srv.addr):
        with sandpool.Client(addr, tls=credentials(certs), timeout=10) as client:
            s = client.acquire(pool, wait=10)
            r = s.execute("print(1)")
            assert (r.stdout, r.exit_code) == ("1\n", 0), addr
            assert s.release() is sandpool.LeaseState.ACTIVE

    async def main() -> None:
        async with sandpool.AsyncClient(srv.addr, tls=credentials(certs), timeout=10) as client:
            async with client.acquire(pool, wait=10) as s:
                r = await s.run_collect("print(1 + 1)")
                assert r.stdout == "2\n"

    asyncio.run(main())


def test_plaintext_and_untrusting_clients_fail_fast(tls_server: Tuple[Server, str]) -> None:
    srv, _ = tls_server
    # Plaintext to a TLS listener, then TLS with the system roots (which do
    # not know the test CA): both Unavailable, well before the deadline.
    for tls in (None, True):
        with sandpool.Client(srv.addr, tls=tls, timeout=5) as client:
            t0 = time.monotonic()
            with pytest.raises(sandpool.Unavailable):
                client.list_pools()
            assert time.monotonic() - t0 < 4.0, f"tls={tls}: must fail, not wait out the deadline"

    async def main() -> None:
        async with sandpool.AsyncClient(srv.addr, timeout=5) as client:
            with pytest.raises(sandpool.Unavailable):
                await client.list_pools()

    t0 = time.monotonic()
    asyncio.run(main())
    assert time.monotonic() - t0 < 4.0


def test_mtls_needs_a_certificate_and_it_owns_the_lease(mtls_server: Tuple[Server, str], certs: Path) -> None:
    srv, pool = mtls_server
    # No client certificate: no service, and no waiting out the deadline.
    with sandpool.Client(srv.addr, tls=credentials(certs), timeout=5) as anonymous:
        t0 = time.monotonic()
        with pytest.raises(sandpool.SandpoolError) as err:
            anonymous.list_pools()
        assert time.monotonic() - t0 < 4.0
        assert isinstance(err.value, sandpool.Unavailable), repr(err.value)

    alice = srv.client
    s = alice.acquire(pool, wait=10)
    try:
        assert s.execute("print(1)").stdout == "1\n"
        with sandpool.Client(f"localhost:{srv.port}", tls=credentials(certs, "bob"), timeout=10) as bob:
            assert pool in [p.spec.name for p in bob.list_pools()]
            # Alice's lease does not exist for bob: not to run on...
            with pytest.raises(grpc.RpcError) as rpc:
                for _ in bob.sessions.Run(
                    session_pb2.RunRequest(lease_id=s.lease_id, code=session_pb2.Code(text="print(2)")),
                    timeout=10,
                ):
                    pass
            lost = lease_lost_of(rpc.value, s.lease_id)
            assert isinstance(lost, sandpool.LeaseLost), rpc.value
            assert lost.code is grpc.StatusCode.NOT_FOUND
            # ...nor to release.
            with pytest.raises(grpc.RpcError) as rpc:
                bob.sessions.Release(session_pb2.ReleaseRequest(lease_id=s.lease_id), timeout=10)
            assert rpc.value.code() is grpc.StatusCode.NOT_FOUND
            # Bob's own lease works.
            with bob.acquire(pool, wait=10) as mine:
                assert mine.execute("print(3)").stdout == "3\n"
        # Alice still holds hers.
        assert s.execute("print(1)").stdout == "1\n"
    finally:
        assert s.release() is sandpool.LeaseState.ACTIVE
