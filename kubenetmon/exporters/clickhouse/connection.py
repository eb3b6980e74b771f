"""Connections to ClickHouse, all through clickhouse-connect's ``Client``.

A server is reached over HTTP(S); ``chdb://`` endpoints use clickhouse-connect's
embedded chDB interface, imported only when such an endpoint is used.

chDB hosts one engine per process, and one process per data path: the engine
takes a ``flock`` on ``<path>/status``, and a second process gets an opaque
``BAD_ARGUMENTS`` (the real cause is only printed on stderr). So within the
process every user of a path (exporters, the report command) shares one
session, released when the last user closes it, and a failure to open is
diagnosed by probing that lock ourselves.

The engine writes its own diagnostics (e.g. why a table could not be attached
after a storage fault) straight to file descriptor 2, bypassing Python. Opening
it therefore redirects fd 2 into a temporary file and logs what the engine
wrote through this module's logger, so that a JSON log stays JSON.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

from kubenetmon.errors import KubenetmonError
from kubenetmon.exporters.clickhouse.config import ClickHouseConfig

__all__ = ["ChdbPathInUseError", "Connection", "Target", "connect", "parse_endpoint", "read_secret"]

log = logging.getLogger(__name__)


class ChdbPathInUseError(KubenetmonError):
    """The chDB data path cannot be opened by this process (another one holds it)."""


@dataclass(frozen=True)
class Target:
    """A parsed endpoint."""

    embedded: bool
    path: str = ""  # chDB data path, or ":memory:"
    host: str = ""
    port: int = 0
    secure: bool = False
    database: str = ""
    username: str = ""
    password: str = ""


def parse_endpoint(endpoint: str) -> Target:
    """Split a DSN into a :class:`Target`; raises ValueError with what to write instead."""
    url = urlparse(endpoint)
    scheme = url.scheme.lower()
    if scheme == "chdb":
        if url.netloc in ("memory", ":memory:"):
            return Target(embedded=True, path=":memory:", database=unquote(url.path.strip("/")))
        if url.netloc or not url.path.startswith("/") or url.path == "/":
            raise ValueError(
                f"{endpoint!r}: a chDB endpoint is chdb:///absolute/path (three slashes) or chdb://memory"
            )
        return Target(embedded=True, path=os.path.realpath(unquote(url.path)))
    if scheme not in ("http", "https"):
        raise ValueError(f"{endpoint!r}: the scheme must be https, http or chdb")
    if not url.hostname:
        raise ValueError(f"{endpoint!r}: no host; write e.g. https://clickhouse.example:8443/default")
    secure = scheme == "https"
    return Target(
        embedded=False,
        host=url.hostname,
        port=url.port or (8443 if secure else 8123),
        secure=secure,
        database=unquote(url.path.strip("/")),
        username=unquote(url.username or ""),
        password=unquote(url.password or ""),
    )


def read_secret(value: str, file: str, env: str, fallback: str) -> str:
    """First of: the value, the file's content, ``$env``, ``fallback`` — trimmed.

    Mounted Secrets end with a newline more often than not; the original
    read them untrimmed and failed authentication (reference §12, 28).
    """
    if value:
        return value.strip()
    if file:
        try:
            return Path(file).read_text().strip()
        except OSError as exc:
            raise KubenetmonError(f"cannot read credentials file {file}: {exc.strerror}") from exc
    from_env = os.environ.get(env, "")
    return from_env.strip() if from_env else fallback


class Connection:
    """A clickhouse-connect ``Client`` plus what is needed to give it back."""

    def __init__(self, client: Any, target: Target, database: str) -> None:
        self.client = client
        self.target = target
        self.database = database
        self._closed = False

    @property
    def embedded(self) -> bool:
        return self.target.embedded

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.target.embedded:
            _SESSIONS.release(self.target.path)
        else:
            self.client.close()


def connect(config: ClickHouseConfig) -> Connection:
    """Open a client for the first reachable of ``config.endpoints()``. Raises on failure (the caller classifies).

    Failover is client-side and in list order: each reconnect (after a failed
    insert) starts again from ``endpoint``, so traffic returns to it once it is
    back. Which server takes an insert does not matter for exactness: a
    retried block carries the same ``insert_deduplication_token``, and
    Replicated tables deduplicate it across replicas. When every endpoint
    fails, the last error is raised with the others attached as notes.
    """
    first = parse_endpoint(config.endpoint)
    if first.embedded:
        database = config.database or first.database or "default"
        return Connection(_SESSIONS.acquire(first.path), first, database)
    failures: list[str] = []
    endpoints = config.endpoints()
    for i, endpoint in enumerate(endpoints):
        try:
            return _connect_server(config, parse_endpoint(endpoint))
        except Exception as exc:
            if i == len(endpoints) - 1:
                for failure in failures:
                    exc.add_note(failure)
                raise
            failures.append(f"{_redacted(endpoint)}: {exc}")
    raise AssertionError("unreachable: endpoints() is never empty")


def _redacted(endpoint: str) -> str:
    url = urlparse(endpoint)
    return f"{url.scheme}://{url.hostname}:{url.port}" if url.port else f"{url.scheme}://{url.hostname}"


def _connect_server(config: ClickHouseConfig, target: Target) -> Connection:
    import clickhouse_connect

    database = config.database or target.database or "default"
    tls = config.tls
    # On a replicated cluster the exporter inserts into the Distributed table:
    # synchronously, so an acknowledged insert is on the shards' Replicated
    # tables (deduplicated there by its token), not in a local spool that a
    # deleted server pod would lose.
    settings = {"insert_distributed_sync": 1} if config.cluster.mode == "replicated" else None
    client = clickhouse_connect.get_client(
        host=target.host,
        port=target.port,
        interface="https" if target.secure else "http",
        username=read_secret(config.username, config.username_file, "CLICKHOUSE_USERNAME", target.username)
        or "default",
        password=read_secret(config.password, config.password_file, "CLICKHOUSE_PASSWORD", target.password),
        database=database,
        compress=False if config.compression == "none" else config.compression,
        connect_timeout=config.connect_timeout,
        send_receive_timeout=config.timeout,
        verify=not tls.insecure_skip_verify,
        ca_cert=tls.ca_file or None,
        client_cert=tls.cert_file or None,
        client_cert_key=tls.key_file or None,
        client_name="kubenetmon",
        # Workers share the client; a session id would serialize them on the server.
        autogenerate_session_id=False,
        settings=settings,
    )
    return Connection(client, target, database)


# --- chDB sessions -------------------------------------------------------------------


class _ChdbSessions:
    """One shared chDB client per data path in this process, reference-counted."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._clients: dict[str, tuple[Any, int]] = {}

    def acquire(self, path: str) -> Any:
        with self._lock:
            held = self._clients.get(path)
            if held is not None:
                self._clients[path] = (held[0], held[1] + 1)
                return held[0]
            other = next((p for p in self._clients if p != path), None)
            if other is not None:
                raise ChdbPathInUseError(
                    f"this process already runs the embedded ClickHouse (chDB) on {other}; chDB hosts one "
                    f"data path per process, so {path} cannot be opened too. Point every chdb:// endpoint "
                    "of this process at the same path, or use a ClickHouse server"
                )
            client = _open_chdb(path)
            self._clients[path] = (client, 1)
            return client

    def release(self, path: str) -> None:
        with self._lock:
            held = self._clients.get(path)
            if held is None:
                return
            client, count = held
            if count > 1:
                self._clients[path] = (client, count - 1)
                return
            del self._clients[path]
        client.close()


_SESSIONS = _ChdbSessions()


def _open_chdb(path: str) -> Any:
    try:
        import clickhouse_connect
    except ImportError as exc:  # pragma: no cover - clickhouse-connect is a hard dependency
        raise KubenetmonError("chdb:// endpoints need clickhouse-connect") from exc
    if path != ":memory:":
        Path(path).mkdir(parents=True, exist_ok=True)
    try:
        with _engine_stderr_logged(path):
            return clickhouse_connect.get_client(interface="chdb", path=path)
    except ImportError as exc:
        raise KubenetmonError(
            "chdb:// endpoints need the embedded engine: pip install 'kubenetmon[chdb]' (the chdb package)"
        ) from exc
    except Exception as exc:
        if "already initialized with path" in str(exc):
            # Opened outside these sessions (clickhouse-connect or chdb used directly).
            raise ChdbPathInUseError(
                f"this process already runs the embedded ClickHouse (chDB) on another data path, so {path} "
                f"cannot be opened too (chDB hosts one data path per process): {exc}"
            ) from exc
        holder = _lock_holder(path)
        if holder is not None:
            raise ChdbPathInUseError(
                f"chDB data path {path} is in use by another process ({holder}): the lock on "
                f"{path}/status is held. chDB allows one process per data path; stop that process, "
                "give this one its own path, or use a ClickHouse server shared by both"
            ) from exc
        raise


_STDERR_LOCK = threading.Lock()


@contextlib.contextmanager
def _engine_stderr_logged(path: str) -> Iterator[None]:
    """Send what the engine writes to fd 2 during the block to the log instead.

    fd 2 is process-wide: another thread writing to stderr meanwhile is captured
    too and logged here (not lost). Opens are rare (start, recovery), so the
    window is short.
    """
    with _STDERR_LOCK, tempfile.TemporaryFile() as sink:
        saved = os.dup(2)
        try:
            os.dup2(sink.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
        finally:
            os.close(saved)
            sink.seek(0)
            for line in sink.read().decode("utf-8", "replace").splitlines():
                if line.strip():
                    log.warning("embedded ClickHouse (chDB) at %s: %s", path, line.strip())


def _lock_holder(path: str) -> str | None:
    """Describe who holds ``<path>/status``, or None when nobody does."""
    status = Path(path) / "status"
    try:
        fd = os.open(status, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pass
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        try:
            content = status.read_text(errors="replace")
        except OSError:
            content = ""
        pid = next((line.split(":", 1)[1].strip() for line in content.splitlines() if line.startswith("PID:")), "")
        return f"PID {pid}" if pid else "PID unknown"
    finally:
        os.close(fd)
