"""Getting the range documents: HTTP with checks, Azure's dated name, the disk cache, last-good state.

Nothing here needs the Internet to start: :class:`RangeLoader` first reads
local files and the cache of the last good download, and downloads only when
asked (the processor does it in a background thread; ``kubenetmon
cloud-ranges fetch`` does it on another machine for air-gapped gateways).
A download counts only after the HTTP status, the JSON and the provider's
schema have been checked; otherwise the source keeps its last good entries.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from kubenetmon import __version__
from kubenetmon.processors.cloud_prefix.config import CloudPrefixConfig
from kubenetmon.processors.cloud_prefix.sources import (
    SOURCE_CLOUD,
    STANDARD_FILE_NAMES,
    RangeEntry,
    SourceFormatError,
    parse_source,
)
from kubenetmon.processors.cloud_prefix.table import (
    PrefixTable,
    RangeEntryMap,
    build_table_from_resolved,
    resolve_source,
)

__all__ = ["FetchError", "RangeCache", "RangeLoader", "decode_document", "discover_azure_url", "http_get"]

MAX_DOCUMENT_BYTES = 64 << 20  # Azure's is ~4 MB; anything this big is not a range document
_AZURE_LINK = re.compile(r"https?://[^\s\"'<>]+?ServiceTags_Public_(\d{8})\.json")


class FetchError(Exception):
    """A download failed; ``reason`` is the metric label (http_error, timeout, network_error,
    invalid_json, invalid_schema)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def http_get(url: str, timeout: float, max_bytes: int = MAX_DOCUMENT_BYTES, method: str = "GET") -> bytes:
    """The body of a 200 response, read within ``timeout`` seconds in total."""
    request = urllib.request.Request(
        url, method=method, headers={"User-Agent": f"kubenetmon/{__version__}", "Accept-Encoding": "identity"}
    )
    deadline = time.monotonic() + timeout
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            if response.status != 200:
                raise FetchError("http_error", f"{url}: HTTP {response.status}")
            chunks: list[bytes] = []
            size = 0
            while chunk := response.read(1 << 16):
                size += len(chunk)
                if size > max_bytes:
                    raise FetchError("invalid_schema", f"{url}: larger than {max_bytes} bytes")
                if time.monotonic() > deadline:
                    raise FetchError("timeout", f"{url}: not complete after {timeout:g}s")
                chunks.append(chunk)
            return b"".join(chunks)
    except urllib.error.HTTPError as exc:
        raise FetchError("http_error", f"{url}: HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, TimeoutError | socket.timeout):
            raise FetchError("timeout", f"{url}: no answer within {timeout:g}s") from None
        raise FetchError("network_error", f"{url}: {exc.reason}") from None
    except TimeoutError:
        raise FetchError("timeout", f"{url}: no answer within {timeout:g}s") from None
    except (OSError, ValueError) as exc:  # IncompleteRead, resets, bad URLs
        raise FetchError("network_error", f"{url}: {exc!r}") from None


# No number in a range document has more digits than this (they are sync tokens and dates at most);
# Python refuses to convert more than 4,300 digits with a bare ValueError.
MAX_NUMBER_DIGITS = 40


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_NUMBER_DIGITS:
        raise ValueError(f"holds a number of {len(text.lstrip('-'))} digits (at most {MAX_NUMBER_DIGITS} expected)")
    return int(text)


def decode_document(source: str, body: bytes) -> list[RangeEntry]:
    """Parse a downloaded or cached document; FetchError(invalid_json|invalid_schema) when it is not one."""
    try:
        doc = json.loads(body, parse_int=_bounded_int)
    except RecursionError:
        # The C decoder stops at the interpreter's recursion limit; a real document nests 5 levels.
        raise FetchError("invalid_json", f"{source}: not a range document (JSON nested thousands of levels deep)"
                         ) from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, _bounded_int
        raise FetchError("invalid_json", f"{source}: not JSON we accept ({exc})") from None
    try:
        return parse_source(source, doc)
    except SourceFormatError as exc:
        raise FetchError("invalid_schema", str(exc)) from None


def _exists(url: str, timeout: float) -> bool:
    """Whether a 200 answers ``url``; the body is not read. Network errors propagate (stop probing)."""
    request = urllib.request.Request(url, method="HEAD", headers={"User-Agent": f"kubenetmon/{__version__}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return bool(response.status == 200)
    except urllib.error.HTTPError as exc:
        if exc.code in (405, 501):  # HEAD not allowed: ask with GET, drop the body unread
            try:
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    return bool(response.status == 200)
            except urllib.error.HTTPError:
                return False
        return False
    except urllib.error.URLError as exc:
        reason = "timeout" if isinstance(exc.reason, TimeoutError | socket.timeout) else "network_error"
        raise FetchError(reason, f"{url}: {exc.reason}") from None
    except OSError as exc:
        raise FetchError("network_error", f"{url}: {exc!r}") from None


def discover_azure_url(
    template: str,
    *,
    landing_page: str,
    timeout: float,
    days: int,
    concurrency: int,
    today: date | None = None,
    log: logging.Logger | None = None,
) -> str:
    """The URL of the newest ``ServiceTags_Public_YYYYMMDD.json``.

    The landing page links it; if that fails, dates are probed newest first
    in waves of ``concurrency`` HEAD requests, ``days`` at most (the original
    made up to 92 sequential GETs).
    """
    if "{date}" not in template:
        return template
    if landing_page:
        try:
            page = http_get(landing_page, timeout, max_bytes=8 << 20).decode("utf-8", "replace")
            links = {m.group(1): m.group(0) for m in _AZURE_LINK.finditer(page)}
            if links:
                return links[max(links)]
            if log:
                log.warning("azure: %s links no ServiceTags_Public file; probing dates", landing_page)
        except FetchError as exc:
            if log:
                log.warning("azure: landing page failed (%s); probing dates", exc)
    start = today or datetime.now(UTC).date()
    candidates = [template.replace("{date}", (start - timedelta(days=i)).strftime("%Y%m%d")) for i in range(days)]
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="azure-probe") as pool:
        for first in range(0, len(candidates), concurrency):
            wave = candidates[first : first + concurrency]
            for url, found in zip(wave, pool.map(lambda u: _exists(u, timeout), wave), strict=True):
                if found:
                    return url
    raise FetchError("http_error", f"azure: no {template} found for the last {days} days")


class RangeCache:
    """The last good download of each source, one file per source, replaced atomically."""

    def __init__(self, directory: str) -> None:
        self.directory = Path(directory)

    def path(self, source: str) -> Path:
        return self.directory / STANDARD_FILE_NAMES[source]

    def write(self, source: str, body: bytes) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        target = self.path(source)
        tmp = target.with_suffix(f".tmp{os.getpid()}")
        with open(tmp, "wb") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)


@dataclass(frozen=True)
class _Loaded:
    winners: RangeEntryMap
    origin: str  # "file:PATH", "cache:PATH" or "url:URL"
    mtime: float  # when the document was written or downloaded


class RangeLoader:
    """Keeps the last good entries of every enabled source and builds tables from them.

    ``on_result(source, result)`` is called for every load or download
    (result ``loaded``, ``success`` or a :class:`FetchError` reason).
    """

    def __init__(
        self,
        config: CloudPrefixConfig,
        log: logging.Logger,
        on_result: Callable[[str, str], None] = lambda source, result: None,
        today: Callable[[], date] | None = None,
        stop: threading.Event | None = None,
    ) -> None:
        self._config = config
        self._log = log
        self._on_result = on_result
        self._today = today
        self._stop = stop or threading.Event()  # set by shutdown: stop waiting between retries
        self._cache = RangeCache(config.cache_dir) if config.cache_dir else None
        self._sources = {name: s for name, s in config.sources.items() if s.enabled}
        self._loaded: dict[str, _Loaded] = {}

    @property
    def sources(self) -> list[str]:
        return list(self._sources)

    def loaded(self) -> dict[str, str]:
        """Source → where its current entries came from."""
        return {name: state.origin for name, state in self._loaded.items()}

    def missing(self) -> list[str]:
        return [name for name in self._sources if name not in self._loaded]

    def covers(self, cloud: str) -> bool:
        """True when every enabled source of ``cloud`` (any source, for no cloud) has entries."""
        wanted = [n for n in self._sources if not cloud or SOURCE_CLOUD[n] == cloud]
        if not cloud:
            return bool(self._loaded)
        return bool(wanted) and all(n in self._loaded for n in wanted)

    def _file_of(self, name: str) -> Path | None:
        source = self._sources[name]
        if source.file:
            return Path(source.file)
        if self._config.files_dir:
            candidate = Path(self._config.files_dir) / STANDARD_FILE_NAMES[name]
            if candidate.exists():
                return candidate
        return None

    def _load_path(self, name: str, path: Path, kind: str) -> bool:
        try:
            body = path.read_bytes()
            mtime = path.stat().st_mtime
        except OSError as exc:
            self._log.warning("cloud ranges: cannot read %s for %s: %s", path, name, exc)
            self._on_result(name, "file_error")
            return False
        try:
            winners = resolve_source(name, decode_document(name, body))
        except FetchError as exc:
            self._log.error("cloud ranges: %s %s is not usable: %s", kind, path, exc)
            self._on_result(name, exc.reason)
            return False
        self._loaded[name] = _Loaded(winners, f"{kind}:{path}", mtime)
        self._on_result(name, "loaded")
        return True

    def load_local(self) -> list[str]:
        """Load every source from its file, else from the cache; return the sources loaded."""
        done = []
        for name in self._sources:
            path = self._file_of(name)
            if path is not None and self._load_path(name, path, "file"):
                done.append(name)
                continue
            cached = self._cache.path(name) if self._cache is not None else None
            if cached is not None and cached.exists() and self._load_path(name, cached, "cache"):
                done.append(name)
        return done

    def _due(self, name: str, now: float) -> float:
        """Seconds until ``name``'s download is due (0: now)."""
        held = self._loaded.get(name)
        return 0.0 if held is None else max(0.0, held.mtime + self._config.refresh_interval - now)

    def _downloads(self, name: str) -> bool:
        return bool(self._sources[name].url) and not self._config.offline

    def due_in(self, now: float | None = None) -> float:
        """Seconds until the next refresh is due: 0 when a downloadable source has no data yet."""
        now = time.time() if now is None else now
        waits = [self._due(name, now) for name in self._sources if self._downloads(name)]
        return min(waits, default=self._config.refresh_interval)

    def refresh(self, force: bool = True) -> list[str]:
        """Download every source that has a URL (re-read changed files of the others).

        Without ``force``, only sources that have no data or whose data is
        older than ``refresh_interval`` are downloaded. Returns the sources
        whose entries changed. A failed source keeps its last good entries;
        the failure is logged and reported.
        """
        changed = []
        now = time.time()
        for name, source in self._sources.items():
            if self._stop.is_set():
                break
            if self._downloads(name):
                if (force or self._due(name, now) == 0.0) and self._download(name, source.url):
                    changed.append(name)
                continue
            path = self._file_of(name)
            if path is None:
                continue
            held = self._loaded.get(name)
            try:
                unchanged = held is not None and held.origin == f"file:{path}" and path.stat().st_mtime == held.mtime
            except OSError:
                unchanged = False
            if not unchanged and self._load_path(name, path, "file"):
                changed.append(name)
        return changed

    def _download(self, name: str, url: str) -> bool:
        cfg = self._config
        wait = cfg.retry_backoff
        for attempt in range(cfg.fetch_retries + 1):
            try:
                if name == "azure":
                    url = discover_azure_url(
                        url,
                        landing_page=cfg.azure_landing_page,
                        timeout=cfg.fetch_timeout,
                        days=cfg.azure_probe_days,
                        concurrency=cfg.azure_probe_concurrency,
                        today=self._today() if self._today else None,
                        log=self._log,
                    )
                body = http_get(url, cfg.fetch_timeout)
                winners = resolve_source(name, decode_document(name, body))
            except FetchError as exc:
                # A document that is not one will not become one by asking again.
                final = attempt == cfg.fetch_retries or exc.reason in ("invalid_json", "invalid_schema")
                self._log.log(
                    logging.ERROR if final else logging.WARNING,
                    "cloud ranges: download of %s failed (attempt %d of %d): %s%s",
                    name, attempt + 1, cfg.fetch_retries + 1, exc,
                    "; keeping the last good ranges" if final else "",
                )
                if final:
                    self._on_result(name, exc.reason)
                    return False
                if self._stop.wait(wait):
                    return False
                wait *= 2
                continue
            self._loaded[name] = _Loaded(winners, f"url:{url}", time.time())
            if self._cache is not None:
                try:
                    self._cache.write(name, body)
                except OSError as exc:
                    self._log.warning("cloud ranges: cannot write the cache %s: %s", self._cache.path(name), exc)
            self._on_result(name, "success")
            return True
        return False

    def build(self) -> PrefixTable:
        """A table of every source's current entries."""
        return build_table_from_resolved({name: state.winners for name, state in self._loaded.items()})
