"""The metrics HTTP server: /metrics (Prometheus text), /healthz, /readyz."""
from __future__ import annotations

import errno
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from learnd.daemon.errors import StartupError
from learnd.daemon.supervisor.sockets import EXIT_PORT_IN_USE


def make_server(host, port, registry, healthy, ready):
    """A ThreadingHTTPServer bound to (host, port); healthy() and ready() -> bool."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                ok = healthy()
                self._send(200 if ok else 503, b"ok\n" if ok else b"unhealthy\n")
            elif path == "/readyz":
                ok = ready()
                self._send(200 if ok else 503, b"ready\n" if ok else b"not ready\n")
            else:
                self._send(404, b"not found: try /metrics, /healthz or /readyz\n")

        def _send(self, code, body, ctype="text/plain; charset=utf-8"):
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):  # scrapes are not log events
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server


def bind_metrics(config, registry, healthy, ready):
    """(server, its /metrics URL): make_server on the configured metrics address, or a
    StartupError saying why not (exit 3 when the port is taken)."""
    try:
        server = make_server(config.metrics_host, config.metrics_port, registry, healthy, ready)
    except OSError as exc:
        raise StartupError(f"cannot serve metrics on {config.metrics}: {exc.strerror}",
                           EXIT_PORT_IN_USE if exc.errno == errno.EADDRINUSE else 1) from None
    return server, f"http://{config.metrics_host}:{server.server_address[1]}/metrics"


def serve_in_thread(server):
    thread = threading.Thread(target=server.serve_forever, name="learnd-metrics", daemon=True)
    thread.start()
    return thread
