"""`sandpool mcp` driven by the official Python MCP SDK (a client nobody here
wrote), over stdio and over streamable HTTP, against the real server."""

from __future__ import annotations

import base64
import os
import re
import signal
import subprocess
import threading
import time
from contextlib import AsyncExitStack
from typing import Any, Awaitable, Callable, List, Optional

import anyio
import httpx2
import pytest
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp.types import CallToolResult, EmbeddedResource, ImageContent, TextContent

from conftest import PoolFactory, Server, debug_binary, wait_for

TOOLS = {
    "execute_code",
    "execute_code_in_context",
    "run_shell",
    "upload_file",
    "download_file",
    "list_files",
    "list_languages",
    "install_libraries",
}
PLOT = "import matplotlib.pyplot as plt\nplt.plot([1, 4, 9])\nplt.show()\n"
IDLE_RELEASE = 3
LEASE_TTL = 2


def cli() -> str:
    return str(debug_binary("sandpool-client", "sandpool"))


def texts(result: CallToolResult) -> str:
    return "\n".join(c.text for c in result.content if isinstance(c, TextContent))


def active_leases(server: Server, pool: str) -> int:
    return int(server.client.get_stats(pool).active_leases)


async def call(session: ClientSession, tool: str, **args: Any) -> CallToolResult:
    return await session.call_tool(tool, args)


async def exercise(session: ClientSession, server: Server, pool: str) -> None:
    """What both transports must do: tools, runs, files, a plot, a context."""
    tools = {t.name for t in (await session.list_tools()).tools}
    assert TOOLS <= tools, f"missing tools: {TOOLS - tools}"

    ok = await call(session, "execute_code", code="print('hello from mcp')")
    assert not ok.is_error, texts(ok)
    assert "exit_code: 0" in texts(ok) and "hello from mcp" in texts(ok)
    assert active_leases(server, pool) == 1

    failing = await call(session, "execute_code", code="import sys\nprint('bye', file=sys.stderr)\nsys.exit(3)")
    assert "exit_code: 3" in texts(failing) and "bye" in texts(failing)

    with_files = await call(
        session,
        "execute_code",
        code="print(open('in/a.txt').read().upper())",
        files=[{"path": "in/a.txt", "content": "shout"}],
    )
    assert "SHOUT" in texts(with_files), texts(with_files)

    bad = await call(session, "execute_code", code="print(1)", timeout=-1)
    assert bad.is_error and "timeout" in texts(bad)

    plot = await call(session, "execute_code", code=PLOT)
    images = [c for c in plot.content if isinstance(c, ImageContent)]
    assert len(images) == 1, plot.content
    assert images[0].mime_type == "image/png"
    assert base64.b64decode(images[0].data).startswith(b"\x89PNG\r\n\x1a\n")

    csv = await call(
        session,
        "execute_code",
        code="import os\nopen(os.environ['SANDPOOL_OUTPUT_DIR'] + '/result.csv', 'w').write('a,b\\n1,2\\n')",
    )
    files = [c.resource for c in csv.content if isinstance(c, EmbeddedResource)]
    assert [(str(f.uri), getattr(f, "text", None)) for f in files] == [
        ("file:///sandbox/outputs/result.csv", "a,b\n1,2\n")
    ], csv.content

    up = await call(session, "upload_file", path="data/notes.txt", content="line one\n")
    assert not up.is_error, texts(up)
    binary = base64.b64encode(bytes(range(256))).decode()
    up = await call(session, "upload_file", path="/sandbox/data/blob.bin", content=binary, encoding="base64")
    assert not up.is_error, texts(up)
    listing = await call(session, "list_files", path="data")
    assert "notes.txt" in texts(listing) and "blob.bin" in texts(listing), texts(listing)
    down = await call(session, "download_file", path="data/notes.txt")
    resources = [c for c in down.content if isinstance(c, EmbeddedResource)]
    assert len(resources) == 1 and getattr(resources[0].resource, "text", None) == "line one\n", down.content
    down = await call(session, "download_file", path="data/blob.bin")
    blobs = [c for c in down.content if isinstance(c, EmbeddedResource)]
    assert base64.b64decode(getattr(blobs[0].resource, "blob", "")) == bytes(range(256))
    missing = await call(session, "download_file", path="no/such/file")
    assert missing.is_error and "no/such/file" in texts(missing)
    shell = await call(session, "run_shell", command="wc -c < data/notes.txt")
    assert shell.content and "9" in texts(shell)

    await call(session, "execute_code_in_context", code="x = 41")
    again = await call(session, "execute_code_in_context", code="print(x + 1)")
    assert "42" in texts(again), texts(again)

    langs = await call(session, "list_languages")
    assert "default: python" in texts(langs)


def run_async(main: Callable[[], Awaitable[None]]) -> None:
    anyio.run(main)


def test_stdio_tools_idle_release_and_end_of_session(server: Server, make_pool: PoolFactory) -> None:
    pool = make_pool(max_pool_size=2, min_pool_size=1)
    params = StdioServerParameters(
        command=cli(),
        args=["--addr", server.addr, "mcp", "--pool", pool, "--idle-release", str(IDLE_RELEASE)],
    )

    async def main() -> None:
        async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            await exercise(session, server, pool)

            # Idle past --idle-release: the lease goes, the next call says so.
            wait_for("the idle lease to be released", lambda: active_leases(server, pool) == 0, timeout=IDLE_RELEASE + 10)
            after = await call(session, "execute_code_in_context", code="print(x)")
            assert "reset" in texts(after) and "NameError" in texts(after), texts(after)
            files = await call(session, "list_files")
            assert "data" not in texts(files).split("\n", 1)[1], texts(files)
            assert active_leases(server, pool) == 1
        # stdin closed: the process releases the lease and exits.
        wait_for("the stdio session's lease to be released", lambda: active_leases(server, pool) == 0, timeout=10)

    run_async(main)


class HttpMcp:
    """`sandpool mcp --http 127.0.0.1:0` as a process; its URL from stderr."""

    def __init__(self, server: Server, pool: str, token: str) -> None:
        self.proc = subprocess.Popen(
            [cli(), "--addr", server.addr, "mcp", "--pool", pool, "--http", "127.0.0.1:0", "--lease-ttl", str(LEASE_TTL)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "SANDPOOL_MCP_HTTP_TOKEN": token},
        )
        self.lines: List[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.url: str = wait_for("the MCP HTTP server's address", self._url, timeout=20)

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    def _url(self) -> Optional[str]:
        if self.proc.poll() is not None:
            raise RuntimeError(f"sandpool mcp exited with {self.proc.returncode}: {''.join(self.lines)}")
        for line in self.lines:
            m = re.search(r"(http://\S+/mcp)", line)
            if m:
                return m.group(1)
        return None

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=20)


def test_http_needs_the_bearer_token_and_ends_leases_with_sessions(server: Server, make_pool: PoolFactory) -> None:
    pool = make_pool(max_pool_size=2, min_pool_size=1)
    no_token = subprocess.run(
        [cli(), "--addr", server.addr, "mcp", "--pool", pool, "--http", "127.0.0.1:0"],
        capture_output=True,
        text=True,
        timeout=30,
        env={k: v for k, v in os.environ.items() if k != "SANDPOOL_MCP_HTTP_TOKEN"},
    )
    assert no_token.returncode == 2 and "--http-token" in no_token.stderr, no_token.stderr
    token = "t0ken-" + os.urandom(8).hex()
    mcp = HttpMcp(server, pool, token)
    try:
        init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}}
        headers = {"Accept": "application/json, text/event-stream"}
        assert httpx2.post(mcp.url, json=init, headers=headers).status_code == 401
        wrong = {**headers, "Authorization": "Bearer not-" + token}
        assert httpx2.post(mcp.url, json=init, headers=wrong).status_code == 401

        async def refused() -> None:
            http = create_mcp_http_client(headers={"Authorization": "Bearer nope"})
            with pytest.raises(Exception):
                async with AsyncExitStack() as stack:
                    await stack.enter_async_context(http)
                    read, write = await stack.enter_async_context(streamable_http_client(mcp.url, http_client=http))
                    session = await stack.enter_async_context(ClientSession(read, write))
                    with anyio.fail_after(15):
                        await session.initialize()

        run_async(refused)
        assert active_leases(server, pool) == 0

        async def main() -> None:
            http = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
            async with http, streamable_http_client(mcp.url, http_client=http) as (read, write):
                async with ClientSession(read, write) as session:
                    await session.initialize()
                    await exercise(session, server, pool)

                    # A stopped process keeps no lease alive: the server
                    # revokes it; the next call re-acquires and says so.
                    mcp.proc.send_signal(signal.SIGSTOP)
                    try:
                        wait_for("the stalled lease to expire", lambda: active_leases(server, pool) == 0, timeout=LEASE_TTL + 10)
                    finally:
                        mcp.proc.send_signal(signal.SIGCONT)
                    again = await call(session, "run_shell", command="echo back; ls /sandbox/data 2>&1")
                    assert not again.is_error, texts(again)
                    assert "lost" in texts(again) and "reset" in texts(again), texts(again)
                    assert "back" in texts(again) and "No such file" in texts(again), texts(again)
            # The client's DELETE ended the session: its lease goes with it.
            wait_for("the HTTP session's lease to be released", lambda: active_leases(server, pool) == 0, timeout=10)

        run_async(main)

        # A session left open is released when the process is stopped.
        async def left_open() -> None:
            http = create_mcp_http_client(headers={"Authorization": f"Bearer {token}"})
            async with http, streamable_http_client(mcp.url, http_client=http, terminate_on_close=False) as (r, w):
                async with ClientSession(r, w) as session:
                    await session.initialize()
                    ok = await call(session, "run_shell", command="echo held")
                    assert "held" in texts(ok)
            assert active_leases(server, pool) == 1

        run_async(left_open)
        t0 = time.monotonic()
        assert mcp.stop() == 0, "".join(mcp.lines)
        assert active_leases(server, pool) == 0, f"lease still held {time.monotonic() - t0:.1f}s after exit"
    finally:
        if mcp.proc.poll() is None:
            mcp.proc.kill()
            mcp.proc.wait()
