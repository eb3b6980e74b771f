"""The image that ``scripts/build-image`` builds from the Dockerfile: what is in it and that it runs.

Commands run in a chroot of the image's root filesystem as the image's own user (see
tests/image/runner.py); the image is built once per session from this checkout.
"""

from __future__ import annotations

import base64
import hashlib
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from tests.image.runner import REPO, MountedImage, image_config

pytestmark = [pytest.mark.kernel, pytest.mark.slow, pytest.mark.timeout(1800)]

SHIPPED_CONFIGS = ("agent.yaml", "gateway.yaml", "standalone.yaml")  # DESIGN §7
IMAGE_CONFIG_DIR = "/usr/share/kubenetmon/config"
UNPRIVILEGED = "65532:65532"


def _version(context: Path) -> str:
    return str(tomllib.loads((context / "pyproject.toml").read_text())["project"]["version"])


def _ok(done: subprocess.CompletedProcess[str], what: str) -> str:
    assert done.returncode == 0, f"{what} failed in the image ({done.returncode}):\n{done.stdout}{done.stderr}"
    return done.stdout


def _record_hash(data: bytes) -> str:
    """A wheel RECORD's hash field: sha256, urlsafe base64 without padding."""
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def test_the_image_runs_as_the_unprivileged_user_and_reports_the_checkouts_version(
    kubenetmon_image: str, image_context: Path
) -> None:
    with MountedImage(kubenetmon_image) as image:
        assert image.config.user == UNPRIVILEGED
        assert image.config.entrypoint == ["kubenetmon"]
        assert _ok(image.run(["id", "-u"]), "id").strip() == "65532"
        version = _ok(image.run(["kubenetmon", "--version"]), "kubenetmon --version")
    assert version.strip() == f"kubenetmon {_version(image_context)}"


def test_the_image_lists_the_same_components_as_this_checkout(kubenetmon_image: str) -> None:
    with MountedImage(kubenetmon_image) as image:
        listed = _ok(image.run(["kubenetmon", "components"]), "kubenetmon components")
    here = subprocess.run([str(REPO / ".venv" / "bin" / "kubenetmon"), "components"], capture_output=True,
                          text=True, timeout=120, check=True).stdout

    def kinds_and_types(text: str) -> set[tuple[str, str]]:
        return {(line.split()[0], line.split()[1]) for line in text.splitlines()[1:] if line.strip()}

    assert kinds_and_types(listed) == kinds_and_types(here)
    assert ("receiver", "conntrack") in kinds_and_types(listed)


@pytest.mark.parametrize("name", SHIPPED_CONFIGS)
def test_the_image_validates_its_shipped_config(kubenetmon_image: str, image_context: Path, name: str) -> None:
    with MountedImage(kubenetmon_image) as image:
        shipped = image.root / IMAGE_CONFIG_DIR.lstrip("/") / name
        assert shipped.read_bytes() == (image_context / "config" / name).read_bytes()
        out = _ok(image.run(["kubenetmon", "validate", "--config", f"{IMAGE_CONFIG_DIR}/{name}"],
                            env={"NODE_NAME": "node-a"}), f"kubenetmon validate {name}")
    assert "config OK" in out


def test_the_installed_package_is_the_wheel_built_from_this_checkout(
    kubenetmon_image: str, image_context: Path
) -> None:
    with MountedImage(kubenetmon_image) as image:
        where = _ok(image.run(["python", "-c", (
            "import importlib.metadata as m, kubenetmon; d = m.distribution('kubenetmon'); "
            "print(d.version); print(d._path); print(kubenetmon.__file__)"
        )]), "reading the installed distribution").split()
        version, dist_info, module = where
        record = (image.root / dist_info.lstrip("/") / "RECORD").read_text().splitlines()
        installed = {}
        for line in record:
            path, digest, _size = line.rsplit(",", 2)
            if path.startswith("kubenetmon/") and "__pycache__" not in path:
                installed[path] = (digest, (Path(dist_info).parent / path))
        site = Path(dist_info).parent
        assert module == str(site / "kubenetmon" / "__init__.py"), "kubenetmon is imported from elsewhere"
        assert version == _version(image_context)
        checkout = {
            str(p.relative_to(image_context)) for p in (image_context / "kubenetmon").rglob("*.py")
            if "__pycache__" not in p.parts
        }
        assert checkout <= installed.keys(), f"not in the wheel: {sorted(checkout - installed.keys())}"
        differs = [
            path for path, (digest, target) in installed.items()
            if digest != _record_hash((image_context / path).read_bytes())
            or _record_hash((image.root / str(target).lstrip("/")).read_bytes()) != digest
        ]
    assert not differs, f"the installed wheel differs from the checkout in {differs}"


def test_the_runtime_image_has_no_compiler(kubenetmon_image: str) -> None:
    compilers = ("cc", "gcc", "c++", "g++", "cpp", "clang", "tcc", "x86_64-linux-gnu-gcc", "as", "ld")
    with MountedImage(kubenetmon_image) as image:
        path = image.config.env["PATH"].split(":")

        def found(name: str) -> list[str]:
            return [f"{d}/{name}" for d in path if (image.root / d.lstrip("/") / name).exists()
                    or (image.root / d.lstrip("/") / name).is_symlink()]

        # The probe finds what is there (so an empty answer below means something).
        assert found("python") and found("kubenetmon")
        present = [hit for name in compilers for hit in found(name)]
        versioned = [str(p) for d in path for p in (image.root / d.lstrip("/")).glob("*-gcc-*")]
    assert not present and not versioned, f"the runtime stage ships a compiler: {present + versioned}"


def test_the_charts_default_image_is_what_build_image_tags(kubenetmon_image: str) -> None:
    for chart in ("kubenetmon-agent", "kubenetmon-server"):
        values = yaml.safe_load((REPO / "charts" / chart / "values.yaml").read_text())
        app_version = yaml.safe_load((REPO / "charts" / chart / "Chart.yaml").read_text())["appVersion"]
        reference = f"{values['image']['repository']}:{values['image']['tag'] or app_version}"
        assert image_config(reference).id == kubenetmon_image, (
            f"{chart} deploys {reference}, which is not the image scripts/build-image just built"
        )
