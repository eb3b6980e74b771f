#!/usr/bin/env python3
"""The container image: size, layers and build time of ``scripts/build-image`` (buildah, no Docker engine).

Builds an export of this checkout's HEAD (``git archive``, so that others' uncommitted edits do
not enter), plain (the charts' default tag) and with ``EXTRAS=chdb``, each:

* cold (``--cold`` only): a fresh machine after the README's setup. It deletes the cached base
  tarball (/var/cache/kubenetmon-image) and EVERY image in buildah's storage on this machine, then
  builds: mmdebstrap base, ``apt-get install build-essential``, every wheel downloaded. The chdb
  build comes second and so finds the base and the apt layer made;
* after a source change: one comment line added to ``kubenetmon/__init__.py`` in the export, which
  is what CI's build sees after new commits (the wheels stage's ``pip wheel``, the runtime
  ``pip install`` and their layer commits run again; base and apt layer cached);
* warm: nothing changed since the previous build (every layer from the cache).

The load average is reported: the machine is shared, and build time is mostly I/O and downloads.
Rewrites the section ``Image`` of docs/benchmarks.md. Needs root.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from _report import replace_section  # noqa: E402

START, END = "<!-- benchmarks:image:start -->", "<!-- benchmarks:image:end -->"
SCRIPT = ROOT / "scripts" / "build-image"
CACHE_DIR = Path(os.environ.get("KUBENETMON_IMAGE_CACHE", "/var/cache/kubenetmon-image"))


def _version() -> str:
    import tomllib

    return str(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"])


def build(tag: str, context: Path, extras: str, log: Path) -> tuple[float, str]:
    """Seconds taken and the build's base image (from the script's own log line)."""
    started = time.monotonic()
    with log.open("w") as out:
        done = subprocess.run([str(SCRIPT), tag], env={**os.environ, "CONTEXT": str(context), "EXTRAS": extras},
                              stdout=out, stderr=subprocess.STDOUT, check=False)
    took = time.monotonic() - started
    text = log.read_text(errors="replace")
    if done.returncode != 0:
        sys.exit(f"image_bench: scripts/build-image {tag} failed; log {log}:\n{text[-4000:]}")
    base = next((line.split(" on ", 1)[1].split(" with ")[0].strip() for line in text.splitlines()
                 if line.startswith("build-image: building ")), "?")
    return took, base


def describe(ref: str) -> tuple[str, int]:
    """(size as buildah prints it, number of layers)."""
    listed = json.loads(subprocess.run(["buildah", "images", "--json", ref], capture_output=True, text=True,
                                       check=True).stdout)
    inspected = json.loads(subprocess.run(["buildah", "inspect", "--type", "image", ref], capture_output=True,
                                          text=True, check=True).stdout)
    return str(listed[0]["size"]), len(inspected["OCIv1"]["rootfs"]["diff_ids"])


def touch_source(context: Path) -> None:
    with (context / "kubenetmon" / "__init__.py").open("a") as f:
        f.write(f"# image_bench {time.time_ns()}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cold", action="store_true",
                        help="also a cold build: deletes the base cache and EVERY image in buildah's storage")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("image_bench: needs root (buildah --isolation chroot, mmdebstrap)")
    version = _version()
    images = {"": f"kubenetmon:{version}", "chdb": f"kubenetmon:{version}-chdb"}
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="image-bench-") as tmp:
        context = Path(tmp) / "context"
        context.mkdir()
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", "HEAD"], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(context)], input=archive.stdout, check=True)
        times: dict[tuple[str, str], float] = {}
        base = "?"
        if args.cold:
            shutil.rmtree(CACHE_DIR, ignore_errors=True)
            subprocess.run(["buildah", "rmi", "--all", "--force"], capture_output=True, check=False)
            for extras, tag in images.items():
                times[(extras, "cold")], base = build(tag, context, extras, Path(tmp) / "cold.log")
        for extras, tag in images.items():
            build(tag, context, extras, Path(tmp) / "prime.log")  # so that "warm" follows a build of this tree
            times[(extras, "warm")], base = build(tag, context, extras, Path(tmp) / "warm.log")
            touch_source(context)
            times[(extras, "change")], base = build(tag, context, extras, Path(tmp) / "change.log")
    load_after = os.getloadavg()
    base_size, _ = describe(base)

    def cell(extras: str, kind: str) -> str:
        return f"{times[(extras, kind)]:.0f} s" if (extras, kind) in times else "not measured (--cold)"

    rows = []
    for extras, tag in images.items():
        size, layers = describe(tag)
        rows.append(f"| `{tag}`{' (EXTRAS=chdb)' if extras else ''} | {size} | {layers} | {cell(extras, 'cold')} "
                    f"| {cell(extras, 'change')} | {cell(extras, 'warm')} |")
    section = "\n".join([
        START,
        "## Image (`bench/image_bench.py`)",
        "",
        f"{dt.date.today().isoformat()}, {os.cpu_count()} cores, load average {load_before[0]:.1f} before and "
        f"{load_after[0]:.1f} after (a shared machine: build times are mostly downloads, unpacking and layer "
        "commits, so they swing with load). `scripts/build-image` on a `git archive HEAD` export, buildah "
        f"(`--isolation chroot --layers`), base `{base}` ({base_size}: python:3.11-slim-bookworm cannot be "
        "pulled here, so the script made it with mmdebstrap).",
        "",
        "| image | size | layers | cold | after a source change | warm, unchanged |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        "*Cold*: a fresh machine after `scripts/setup` (which itself takes ~30 s to install buildah and "
        "mmdebstrap); the chdb build follows the plain one, so its base and apt layer are already there. "
        "*After a source change*: what CI's build sees after new commits; the test suite builds both images "
        "(tests/image), so this pair of numbers is what the image tests add to a CI run, plus ~1 min of tests. "
        "Layers: the base, the runtime `pip install`, the shipped configs, the user. The base is larger than "
        "python:3.11-slim (~130 MB) because Debian's python3.11-dev brings libc6-dev and a static libpython.",
        END,
    ])
    replace_section(START, END, section)
    print(section)


if __name__ == "__main__":
    main()
