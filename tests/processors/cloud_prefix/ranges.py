"""Helpers for the cloud_prefix tests: the real provider files, small hand-made documents, a loopback server."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

RANGES_DIR = Path(__file__).resolve().parents[4] / "shared" / "data" / "cloud-ranges"
if not RANGES_DIR.exists():  # CI lays shared/ beside the clone; a session has it at /work/shared
    RANGES_DIR = Path("/work/shared/data/cloud-ranges")


def real_file(name: str) -> Path:
    path = RANGES_DIR / name
    if not path.exists():
        pytest.skip(f"the real provider file {path} is not here (shared/data/cloud-ranges)")
    return path


def aws_doc(*entries: tuple[str, str, str]) -> dict[str, Any]:
    """(prefix, service, region) → an ip-ranges.json; IPv6 prefixes go to ipv6_prefixes."""
    v4 = [{"ip_prefix": p, "service": s, "region": r, "network_border_group": r} for p, s, r in entries if ":" not in p]
    v6 = [{"ipv6_prefix": p, "service": s, "region": r, "network_border_group": r} for p, s, r in entries if ":" in p]
    return {"syncToken": "1", "createDate": "2025-07-25-00-00-00", "prefixes": v4, "ipv6_prefixes": v6}


def gcp_doc(*entries: tuple[str, str, str]) -> dict[str, Any]:
    return {
        "syncToken": "1",
        "creationTime": "2025-07-25T00:00:00",
        "prefixes": [
            {("ipv6Prefix" if ":" in p else "ipv4Prefix"): p, "service": s, "scope": r} for p, s, r in entries
        ],
    }


def google_doc(*prefixes: str) -> dict[str, Any]:
    return {"syncToken": "1", "creationTime": "x", "prefixes": [{("ipv6Prefix" if ":" in p else "ipv4Prefix"): p}
                                                              for p in prefixes]}


def azure_group(name: str, system_service: str, region: str, *prefixes: str) -> dict[str, Any]:
    return {
        "name": name,
        "id": name,
        "properties": {
            "changeNumber": 1,
            "region": region,
            "regionId": 0,
            "platform": "Azure",
            "systemService": system_service,
            "addressPrefixes": list(prefixes),
            "networkFeatures": ["API"],
        },
    }


def azure_doc(*groups: dict[str, Any]) -> dict[str, Any]:
    return {"changeNumber": 1, "cloud": "Public", "values": list(groups)}


def write_json(path: Path, doc: Any) -> Path:
    path.write_text(json.dumps(doc))
    return path


@dataclass
class Route:
    status: int = 200
    body: bytes = b""
    delay: float = 0.0


@dataclass
class RangeServer:
    """A loopback HTTP server: ``routes[path] = Route(...)``; every request path is recorded."""

    base: str
    routes: dict[str, Route] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)

    def url(self, path: str) -> str:
        return self.base + path

    def serve_json(self, path: str, doc: Any) -> str:
        self.routes[path] = Route(body=json.dumps(doc).encode())
        return self.url(path)


@contextmanager
def serving() -> Iterator[RangeServer]:
    """A loopback HTTP server on 127.0.0.1 for the duration of the block."""
    server_state = RangeServer(base="")

    class Handler(BaseHTTPRequestHandler):
        def _answer(self, with_body: bool) -> None:
            server_state.requests.append((self.command, self.path))
            route = server_state.routes.get(self.path, Route(status=404, body=b"not found"))
            if route.delay:
                time.sleep(route.delay)
            try:
                self.send_response(route.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(route.body)))
                self.end_headers()
                if with_body:
                    self.wfile.write(route.body)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timeout tests)

        def do_GET(self) -> None:
            self._answer(True)

        def do_HEAD(self) -> None:
            self._answer(False)

        def log_message(self, format: str, *args: Any) -> None:
            return None

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    server_state.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield server_state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)
