"""A small read-only HTTP endpoint (`/metrics`, `/healthz`, `/status`) for either side.

The standard library's threading HTTP server answers in its own thread; every route is an async
function that runs on the process's event loop (through `run_coroutine_threadsafe`), so the
handlers read the runtime's state on the thread that changes it. Nothing here imports a side.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

__all__ = ["HttpEndpoint", "Response", "Route"]

log = logging.getLogger(__name__)

ROUTE_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class Response:
    """What a route answers."""

    status: int
    content_type: str
    body: bytes


Route = Callable[[], Coroutine[None, None, Response]]


class HttpEndpoint:
    """Serves GET routes on host:port from a background thread."""

    def __init__(self, *, address: str, routes: dict[str, Route]) -> None:
        host, _, port = address.rpartition(":")
        self.host = host or "127.0.0.1"
        self.requested_port = int(port)
        self.routes = routes
        self.port = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"HttpEndpoint({self.host}:{self.port}, routes={sorted(self.routes)})"

    def start(self, loop: asyncio.AbstractEventLoop) -> int:
        """Bind and serve; return the bound port (useful with port 0)."""
        routes = self.routes

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                route = routes.get(path)
                if route is None:
                    self._send(Response(404, "text/plain; charset=utf-8",
                                        f"no such path; try {', '.join(sorted(routes))}\n".encode()))
                    return
                future: concurrent.futures.Future[Response] = asyncio.run_coroutine_threadsafe(
                    route(), loop)
                try:
                    response = future.result(ROUTE_TIMEOUT_S)
                except (concurrent.futures.TimeoutError, RuntimeError) as exc:
                    future.cancel()
                    response = Response(503, "text/plain; charset=utf-8",
                                        f"busy or stopping: {exc!r}\n".encode())
                self._send(response)

            def _send(self, response: Response) -> None:
                self.send_response(response.status)
                self.send_header("Content-Type", response.content_type)
                self.send_header("Content-Length", str(len(response.body)))
                self.end_headers()
                self.wfile.write(response.body)

            def log_message(self, format: str, *args: object) -> None:
                log.debug("http %s", format % args)

        self._server = ThreadingHTTPServer((self.host, self.requested_port), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, name="http-endpoint",
                                        daemon=True)
        self._thread.start()
        log.info("HTTP endpoint on http://%s:%d (%s)", self.host, self.port,
                 ", ".join(sorted(self.routes)))
        return self.port

    def stop(self) -> None:
        """Stop serving and release the port."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
