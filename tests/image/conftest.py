"""The images the tests build: ``scripts/build-image`` on this checkout, plain and with ``EXTRAS=chdb``.

Each is built once per session. ``KUBENETMON_IMAGE_CONTEXT`` builds another directory instead
(e.g. a ``git archive HEAD`` export, while others edit the working tree); the tests then compare
the image with that directory.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.image.runner import REPO, build_image


def _require_builder() -> None:
    if os.geteuid() != 0:
        pytest.skip("building and running the image needs root (buildah --isolation chroot, mount, chroot)")
    if shutil.which("buildah") is None and shutil.which("apt-get") is None:
        pytest.skip("buildah is not installed and cannot be (no apt-get): run scripts/setup as root")


@pytest.fixture(scope="session")
def image_context() -> Path:
    return Path(os.environ.get("KUBENETMON_IMAGE_CONTEXT") or REPO).resolve()


@pytest.fixture(scope="session")
def kubenetmon_image(image_context: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The image ID of ``scripts/build-image`` with no arguments: the default tag, kubenetmon:<version>."""
    _require_builder()
    return build_image(None, context=image_context, log=tmp_path_factory.mktemp("image") / "build.log")


@pytest.fixture(scope="session")
def chdb_image(image_context: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The image ID of ``EXTRAS=chdb scripts/build-image kubenetmon:<version>-chdb`` (embedded ClickHouse)."""
    _require_builder()
    version = _version(image_context)
    return build_image(f"kubenetmon:{version}-chdb", context=image_context, extras="chdb",
                       log=tmp_path_factory.mktemp("image-chdb") / "build.log")


def _version(context: Path) -> str:
    import tomllib

    return str(tomllib.loads((context / "pyproject.toml").read_text())["project"]["version"])
