"""The proxy behind `database_unreachable`: bytes pass, a cut drops and refuses, restore heals."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

import pytest

from pipeline.harness.scenarios.tcp_proxy import TcpProxy


@pytest.fixture
def echo_server() -> Iterator[int]:
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    stop = threading.Event()

    def serve(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            while data := conn.recv(4096):
                conn.sendall(data)

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield server.getsockname()[1]
    stop.set()
    server.close()


def _connect(proxy: TcpProxy) -> socket.socket:
    return socket.create_connection((proxy.host, proxy.port), timeout=5)


def _echo(sock: socket.socket, payload: bytes) -> bytes:
    sock.sendall(payload)
    received = b""
    while len(received) < len(payload):
        chunk = sock.recv(65536)
        if not chunk:
            break
        received += chunk
    return received


def test_bytes_pass_both_ways(echo_server: int) -> None:
    proxy = TcpProxy("127.0.0.1", echo_server).start()
    try:
        with _connect(proxy) as sock:
            payload = bytes(range(256)) * 1000
            assert _echo(sock, payload) == payload
        assert proxy.accepted == 1
    finally:
        proxy.close()


def test_a_cut_drops_open_connections_refuses_new_ones_and_restore_heals(
    echo_server: int,
) -> None:
    proxy = TcpProxy("127.0.0.1", echo_server).start()
    try:
        open_connection = _connect(proxy)
        assert _echo(open_connection, b"before") == b"before"

        assert proxy.cut() == 1
        # The open connection is gone: reading gives EOF or a reset, never an answer.
        with contextlib.suppress(ConnectionError):
            open_connection.sendall(b"during")
            assert open_connection.recv(100) == b""
        with _connect(proxy) as refused, contextlib.suppress(ConnectionError):
            assert refused.recv(100) == b""
        assert proxy.refused == 1

        proxy.restore()
        with _connect(proxy) as healed:
            assert _echo(healed, b"after") == b"after"
        open_connection.close()
    finally:
        proxy.close()
