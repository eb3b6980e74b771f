"""Build the image with ``scripts/build-image`` and run commands in it, without a container engine.

``podman run`` is refused on these machines (the sandbox rejects its rlimits), so a command runs
in a chroot of the image's mounted root filesystem (``buildah from`` + ``buildah mount``), set up
like a container: a private mount namespace (``unshare --mount``) with a fresh ``/proc``, the
host's ``/dev``, the root filesystem remounted read-only (the charts' ``readOnlyRootFilesystem``)
and the given host directories bind-mounted over it; the image's own environment and user (or
the one given); optionally only some capabilities (``setpriv`` from the image) and inside a
network namespace (``ip netns exec``). Every ``exec`` in that chain replaces the process, so
the :class:`subprocess.Popen` pid is the command itself and SIGTERM reaches it directly.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "scripts" / "build-image"
#: A cold build makes the base with mmdebstrap and downloads every wheel; a warm one takes ~1 min.
BUILD_TIMEOUT = 1500.0
_TOOL_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def _tool(name: str) -> str:
    """The host's ``name`` by absolute path: the commands run with the image's PATH."""
    found = shutil.which(name, path=_TOOL_PATH)
    if found is None:
        raise RuntimeError(f"{name} is not installed on this machine (scripts/setup installs the image tools)")
    return found


def build_image(tag: str | None, *, context: Path, log: Path, extras: str = "") -> str:
    """Build ``context`` with ``scripts/build-image [TAG]``; returns the image ID. Fails with the log's tail."""
    iidfile = log.with_suffix(".iid")
    env = {**os.environ, "CONTEXT": str(context), "EXTRAS": extras, "IIDFILE": str(iidfile)}
    with log.open("w") as out:
        done = subprocess.run([str(BUILD_SCRIPT), *([tag] if tag else [])], stdout=out, stderr=subprocess.STDOUT,
                              env=env, timeout=BUILD_TIMEOUT, check=False)
    text = log.read_text(errors="replace")
    assert done.returncode == 0, f"scripts/build-image failed ({done.returncode}); log {log}:\n{text[-6000:]}"
    return iidfile.read_text().strip().removeprefix("sha256:")


@dataclass(frozen=True)
class ImageConfig:
    """What ``buildah inspect`` says about an image."""

    id: str
    user: str
    env: dict[str, str]
    entrypoint: list[str]
    layers: int
    size: int


def image_config(ref: str) -> ImageConfig:
    done = subprocess.run(["buildah", "inspect", "--type", "image", ref], capture_output=True, text=True,
                          timeout=60, check=True)
    data: dict[str, Any] = json.loads(done.stdout)
    oci = data["OCIv1"]
    config = oci.get("config", {})
    env = dict(item.split("=", 1) for item in config.get("Env") or [])
    return ImageConfig(
        id=str(data["FromImageID"]), user=str(config.get("User", "")), env=env,
        entrypoint=list(config.get("Entrypoint") or []), layers=len(oci["rootfs"]["diff_ids"]),
        size=int(data.get("Docker", {}).get("Size") or 0),
    )


class MountedImage:
    """A working container of ``ref`` with its root filesystem mounted; removed on exit."""

    def __init__(self, ref: str) -> None:
        self.ref = ref
        self.config = image_config(ref)
        self.container = ""
        self.root = Path()

    def __enter__(self) -> MountedImage:
        self.container = _buildah("from", "--pull=never", self.ref)
        try:
            self.root = Path(_buildah("mount", self.container))
        except BaseException:
            _buildah("rm", self.container)
            raise
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        try:
            _buildah("umount", self.container)
        finally:
            _buildah("rm", self.container)

    def command(
        self,
        args: Sequence[str],
        *,
        user: str | None = None,
        netns: str | None = None,
        volumes: Mapping[Path, str] | None = None,
        capabilities: Sequence[str] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> tuple[list[str], dict[str, str]]:
        """The argv and environment that run ``args`` in the image (see the module docstring).

        ``user`` defaults to the image's USER; ``capabilities`` (e.g. ``["net_admin"]``) keeps only
        those, with no_new_privs, as a pod's ``capabilities: {drop: [ALL], add: …}`` does.
        """
        root = str(self.root)
        mount, chroot = _tool("mount"), _tool("chroot")
        script = ["set -e"]
        for inside in (volumes or {}).values():
            script.append(f"{_tool('mkdir')} -p {shlex.quote(root + inside)}")
        script += [
            f'{mount} --bind "$R" "$R"', f'{mount} -o remount,bind,ro "$R"',
            f'{mount} -t proc proc "$R/proc"', f'{mount} --rbind /dev "$R/dev"',
        ]
        for host, inside in (volumes or {}).items():
            script.append(f"{mount} --bind {shlex.quote(str(host))} {shlex.quote(root + inside)}")
        inner = list(args)
        if capabilities is not None:
            caps = ",".join(["-all", *(f"+{c}" for c in capabilities)])
            inner = ["setpriv", f"--bounding-set={caps}", f"--inh-caps={caps}", "--no-new-privs", "--", *inner]
        script.append(f'exec {chroot} --userspec={shlex.quote(user or self.config.user)} "$R" "$@"')
        argv = [_tool("unshare"), "--mount", "--propagation", "private", _tool("sh"), "-c", "\n".join(script),
                "image", *inner]
        if netns is not None:
            argv = [_tool("ip"), "netns", "exec", netns, *argv]
        # The image's environment (R, the root's path, is the setup script's; harmless inside).
        full_env = {"PATH": _TOOL_PATH, **self.config.env, **(env or {}), "R": root}
        return argv, full_env

    def run(self, args: Sequence[str], *, timeout: float = 120.0, **kw: Any) -> subprocess.CompletedProcess[str]:
        argv, env = self.command(args, **kw)
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout, check=False)

    def popen(self, args: Sequence[str], *, log: Path, **kw: Any) -> subprocess.Popen[bytes]:
        argv, env = self.command(args, **kw)
        with log.open("wb") as out:
            return subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)


def _buildah(*args: str) -> str:
    done = subprocess.run(["buildah", *args], capture_output=True, text=True, timeout=120, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"`buildah {' '.join(args)}` failed: {done.stderr.strip()}")
    return done.stdout.strip()
