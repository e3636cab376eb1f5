"""uvicorn in a background thread on a socket bound here: what the demo's serve step and the HTTP
tests run (`loraforge serve` runs uvicorn in the foreground instead)."""

from __future__ import annotations

import socket
import threading
import time

import uvicorn
from fastapi import FastAPI

from loraforge.errors import LoraforgeError

START_TIMEOUT_S = 60.0  # lifespan start (the engine's thread) on a loaded 2-core machine


class BackgroundServer:
    """Serves `app` on `sock` (default: 127.0.0.1, any free port) until `stop()`; lifespan on, so
    the engine starts before the first request. `log_config=None` keeps the caller's logging."""

    def __init__(
        self, app: FastAPI, sock: socket.socket | None = None, *, start_timeout_s: float = START_TIMEOUT_S
    ) -> None:
        if sock is None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
        self.sock = sock
        host, self.port = sock.getsockname()[:2]
        self.host = str(host)
        self.server = uvicorn.Server(uvicorn.Config(app, log_config=None, lifespan="on", access_log=False))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + start_timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise LoraforgeError(
                    f"the server on {self.url} did not start within {start_timeout_s:.0f}s; its log above says why"
                )
            time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"http://{f'[{self.host}]' if ':' in self.host else self.host}:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()

    def __enter__(self) -> BackgroundServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
