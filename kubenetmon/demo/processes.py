"""Real ``kubenetmon run`` subprocesses (agents, gateway) with guaranteed teardown.

Each process gets its own process group (so ``kill -9`` reaches any child)
and a log file; :class:`ProcessSet` stops every process it started when it
closes, even after a failure.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO

__all__ = ["KubenetmonProcess", "ProcessSet", "free_port", "scrape_metric", "wait_for_port", "wait_until_ready"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, *, timeout: float = 20.0, process: KubenetmonProcess | None = None) -> None:
    """Wait until something accepts TCP connections on 127.0.0.1:``port``.

    Fails early, with the process's log, when ``process`` exits meanwhile.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and not process.alive:
            raise RuntimeError(f"{process.name} exited ({process.returncode}) before listening:\n{process.log_tail()}")
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.5)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    tail = process.log_tail() if process is not None else ""
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f}s\n{tail}")


def scrape_metric(port: int, name: str) -> float:
    """Sum of every sample of one metric family on a process's ``/metrics`` (Prometheus text)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and line[len(name):len(name) + 1] in (" ", "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def wait_until_ready(port: int, process: KubenetmonProcess, *, timeout: float = 60.0) -> None:
    """Wait until the process's ``health_check`` extension answers ``GET /ready`` with 200."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if not process.alive:
            raise RuntimeError(f"{process.name} exited ({process.returncode}) before it was ready:\n"
                               f"{process.log_tail()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2) as response:
                if response.status == 200:
                    return
        except urllib.error.HTTPError as exc:
            last = exc.read().decode(errors="replace")
        except OSError as exc:
            last = str(exc)
        time.sleep(0.2)
    raise TimeoutError(f"{process.name} not ready after {timeout:.0f}s ({last}):\n{process.log_tail()}")


class KubenetmonProcess:
    """One ``python -m kubenetmon run --config …`` subprocess."""

    def __init__(
        self,
        name: str,
        configs: Sequence[Path],
        *,
        env: Mapping[str, str],
        log_dir: Path,
        log_level: str = "info",
    ) -> None:
        self.name = name
        self.configs = list(configs)
        self.env = dict(env)
        self.log_path = log_dir / f"{name}.log"
        self.log_level = log_level
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.starts = 0
        self.log_offset = 0

    @property
    def command(self) -> list[str]:
        # The installed console script, as an operator runs it; `python -m` when there is none.
        script = Path(sys.executable).with_name("kubenetmon")
        launcher = [str(script)] if script.exists() else [sys.executable, "-m", "kubenetmon"]
        args = [*launcher, "run", "--log-level", self.log_level]
        for config in self.configs:
            args += ["--config", str(config)]
        return args

    def start(self) -> KubenetmonProcess:
        if self.alive:
            raise RuntimeError(f"{self.name} is already running")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_offset = len(self.log_text())  # wait_for_log looks at this start's lines only
        self._log = self.log_path.open("ab")
        self._log.write(f"\n=== start {self.starts + 1}: {' '.join(self.command)}\n".encode())
        self._log.flush()
        self._proc = subprocess.Popen(
            self.command,
            env={**os.environ, **self.env},
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # own process group: kill() reaches children too
        )
        self.starts += 1
        return self

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise RuntimeError(f"{self.name} was never started")
        return self._proc.pid

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    def _signal_group(self, sig: signal.Signals) -> None:
        if self._proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, sig)

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (graceful: the pipeline drains and flushes), then SIGKILL after ``timeout``."""
        if self._proc is None:
            return None
        if self._proc.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self._proc.wait(10)
        self._close_log()
        return self._proc.returncode

    def kill(self) -> None:
        """``kill -9`` the whole process group: no drain, no flush."""
        if self._proc is not None and self._proc.poll() is None:
            self._signal_group(signal.SIGKILL)
            self._proc.wait(10)
        self._close_log()

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for_log(self, text: str, *, timeout: float = 30.0) -> None:
        """Wait until this start's log contains ``text``; fail early if the process exits."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log_text()[self.log_offset:]:
                return
            if not self.alive:
                raise RuntimeError(f"{self.name} exited ({self.returncode}) before logging {text!r}:\n"
                                   f"{self.log_tail()}")
            time.sleep(0.1)
        raise TimeoutError(f"{self.name} did not log {text!r} within {timeout:.0f}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


class ProcessSet:
    """Owns kubenetmon processes; :meth:`close` stops every one (agents before the gateway)."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.processes: dict[str, KubenetmonProcess] = {}

    def spawn(self, name: str, configs: Sequence[Path], env: Mapping[str, str], **kw: str) -> KubenetmonProcess:
        """Start ``name``; a stopped process of that name is restarted (same log, ``starts`` + 1)."""
        proc = self.processes.get(name)
        if proc is None:
            proc = KubenetmonProcess(name, configs, env=env, log_dir=self.log_dir, **kw)
            self.processes[name] = proc
        else:
            proc.configs, proc.env = list(configs), dict(env)
        return proc.start()

    def __getitem__(self, name: str) -> KubenetmonProcess:
        return self.processes[name]

    def __enter__(self) -> ProcessSet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self, timeout: float = 20.0) -> None:
        # Agents first: they flush into the gateway, which flushes into storage.
        order = sorted(self.processes.values(), key=lambda p: p.name.startswith("gateway"))
        for proc in order:
            try:
                proc.stop(timeout)
            except Exception:
                proc.kill()
