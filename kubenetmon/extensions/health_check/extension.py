"""``/live`` and ``/ready`` that reflect the real state of the service.

* ``/ready`` is 200 once every component started and reports ready (caches
  synced, clients open), 503 otherwise, with the reasons in the body.
* ``/live`` is 200 unless a component reports itself unhealthy (e.g. a
  worker thread died), so that the kubelet restarts a wedged process.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from kubenetmon.component import BaseComponent, CreateSettings, Host
from kubenetmon.extensions.health_check.config import HealthCheckConfig


class HealthCheck(BaseComponent):
    def __init__(self, settings: CreateSettings, config: HealthCheckConfig) -> None:
        host, _, port = config.endpoint.rpartition(":")
        self._address = (host or "0.0.0.0", int(port))
        self._host: Host | None = None
        self._server: ThreadingHTTPServer | None = None
        self._log = settings.logger

    @property
    def port(self) -> int:
        return self._server.server_port if self._server else self._address[1]

    def status(self) -> tuple[bool, bool, dict[str, Any]]:
        """(live, ready, details) computed from the host's components."""
        if self._host is None:
            return False, False, {"reason": "not started"}
        problems: dict[str, str] = {}
        not_ready: list[str] = []
        for name, component in self._host.components().items():
            if component is self:
                continue
            reason = component.health()
            if reason:
                problems[name] = reason
            if not component.is_ready():
                not_ready.append(name)
        started = getattr(self._host, "is_ready", lambda: True)()
        ready = started and not not_ready and not problems
        return not problems, ready, {"unhealthy": problems, "not_ready": not_ready}

    def start(self, host: Host) -> None:
        self._host = host
        check = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                live, ready, details = check.status()
                if self.path.rstrip("/") == "/live":
                    ok = live
                elif self.path.rstrip("/") == "/ready":
                    ok = ready
                else:
                    self.send_error(404, "use /live or /ready")
                    return
                body = json.dumps({"status": "ok" if ok else "unavailable", **details}).encode()
                self.send_response(200 if ok else 503)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self._server = ThreadingHTTPServer(self._address, Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="health-check", daemon=True).start()

    def shutdown(self, timeout: float = 30.0) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
