"""A loopback TCP proxy that can cut the line: the database unreachable for T seconds.

Workers reach the scenario's PostgreSQL database through it. `cut()` closes
every open connection at once (a query in flight fails as it does when the
network drops) and, until `restore()`, closes each new connection as soon as
it is accepted, so the client sees the server go away, not a long hang.
One thread accepts; each connection has two pump threads (one per direction).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

_CHUNK = 65536


@dataclass
class TcpProxy:
    upstream_host: str
    upstream_port: int
    host: str = "127.0.0.1"
    port: int = 0
    #: Connections accepted while the line was up / refused while it was cut.
    accepted: int = 0
    refused: int = 0
    _listener: socket.socket | None = None
    _open: set[socket.socket] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _cut = False
    _closed = False

    def start(self) -> TcpProxy:
        listener = socket.create_server((self.host, self.port))
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept_loop, name="tcp-proxy", daemon=True).start()
        return self

    def cut(self) -> int:
        """Drop every open connection and refuse new ones; returns how many were dropped."""
        with self._lock:
            self._cut = True
            dropped = list(self._open)
            self._open.clear()
        for sock in dropped:
            _close(sock)
        return len(dropped) // 2

    def restore(self) -> None:
        with self._lock:
            self._cut = False

    def close(self) -> None:
        self._closed = True
        if self._listener is not None:
            _close(self._listener)
        self.cut()

    # --- threads -----------------------------------------------------------------------
    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            with self._lock:
                cut = self._cut
            if cut:
                self.refused += 1
                _close(client)
                continue
            try:
                upstream = socket.create_connection((self.upstream_host, self.upstream_port), 5)
            except OSError as exc:
                log.warning("tcp proxy: upstream unreachable: %s", exc)
                _close(client)
                continue
            upstream.settimeout(None)
            with self._lock:
                if self._cut:  # cut while connecting
                    _close(client)
                    _close(upstream)
                    continue
                self._open.update((client, upstream))
            self.accepted += 1
            for source, target in ((client, upstream), (upstream, client)):
                threading.Thread(
                    target=self._pump, args=(source, target), name="tcp-proxy-pump", daemon=True
                ).start()

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(_CHUNK):
                target.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._open.discard(source)
                self._open.discard(target)
            _close(source)
            _close(target)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()
