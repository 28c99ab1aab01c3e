"""An upstream that hurts: accepts connections on 127.0.0.1 and answers very slowly, or never."""

from __future__ import annotations

import contextlib
import socket
import threading
import time


class _Listener:
    """A socket on 127.0.0.1 whose connections are handled by ``_serve`` on threads of their own."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(1024)
        self._stopped = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def port(self) -> int:
        return int(self._sock.getsockname()[1])

    def _accept(self) -> None:
        self._sock.settimeout(0.2)
        while not self._stopped.is_set():
            try:
                client, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._accepted(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _accepted(self, client: socket.socket) -> None:
        """Called for each connection before it is served."""

    def _serve(self, client: socket.socket) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        self._stopped.set()
        with contextlib.suppress(OSError):
            self._sock.close()


class Tarpit(_Listener):
    """``mode``: "drip" sends the status line and headers, then one body byte per ``interval``;
    "silent" accepts and never answers. Counts connections; stops by itself on ``stop()``."""

    def __init__(self, mode: str = "drip", interval: float = 1.0) -> None:
        self.mode = mode
        self.interval = interval
        self.connections = 0
        self._clients: list[socket.socket] = []
        self._lock = threading.Lock()
        super().__init__()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/channel"

    def _accepted(self, client: socket.socket) -> None:
        with self._lock:
            self.connections += 1
            self._clients.append(client)

    def _serve(self, client: socket.socket) -> None:
        with contextlib.suppress(OSError):
            client.settimeout(5)
            client.recv(65536)
            if self.mode == "silent":
                self._stopped.wait()
                return
            client.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000000\r\n\r\n")
            while not self._stopped.wait(self.interval):
                client.sendall(b" ")

    def stop(self) -> None:
        super().stop()
        with self._lock:
            for client in self._clients:
                with contextlib.suppress(OSError):
                    client.close()
        time.sleep(0.05)


class ThrottledRelay(_Listener):
    """A TCP relay on 127.0.0.1 in front of ``target_port`` that passes the server's answer on at
    ``bytes_per_second``: a slow upstream with real content. Counts bytes relayed to clients."""

    def __init__(self, target_port: int, bytes_per_second: int) -> None:
        self.target_port = target_port
        self.rate = bytes_per_second
        self.relayed = 0
        self.closed_early = 0
        super().__init__()

    def _serve(self, client: socket.socket) -> None:
        with contextlib.suppress(OSError), client, socket.create_connection(("127.0.0.1", self.target_port)) as server:
            request = client.recv(65536)
            server.sendall(request)
            chunk = max(1, self.rate // 20)
            while not self._stopped.is_set():
                data = server.recv(chunk)
                if not data:
                    return
                try:
                    client.sendall(data)
                except OSError:
                    self.closed_early += 1
                    return
                self.relayed += len(data)
                time.sleep(len(data) / self.rate)
