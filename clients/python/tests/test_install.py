"""Installing the package as a user would: ``pip install ./clients/python``
and the wheel ``python -m build`` makes, each in a fresh venv, then
importing keyward (sync, aio, contrib) from the venv and reading a key
from a real agent through it.

The source is a copy of this directory (what a clone has; pip and
setuptools write build/ and *.egg-info next to the sources, and the
checkout must stay clean). Dependencies and the build backend come from
PyPI once, into a wheelhouse under target/pip-cache/ (kept between runs,
as CI keeps target/); the installs themselves then use no index, so they
are fast and measure the package, not the network. Prints the install
times and the wheel's size.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
import tomllib
import zipfile
from pathlib import Path

import pytest
from conftest import PACKAGE_ROOT

REPO = PACKAGE_ROOT.parent.parent
CACHE = REPO / "target" / "pip-cache"
WHEELHOUSE = CACHE / "wheels"

# Run inside each fresh venv, from a directory with no keyward in it.
CHECK = """
import asyncio, importlib.util, pathlib, sys
import keyward, keyward.aio
root = pathlib.Path(keyward.__file__).parent
assert str(root).startswith(sys.prefix), (root, sys.prefix)
assert (root / "py.typed").is_file() and (root / "_proto" / "keys_pb2.pyi").is_file()
assert importlib.util.find_spec("keyward.contrib.airflow") is not None
with keyward.Client() as client:
    print(client.get("prod/installed").primary.text)
async def main():
    async with keyward.aio.Client() as client:
        return (await client.get("prod/installed")).primary.text
print(asyncio.run(main()))
"""


def sh(*cmd: str | Path, env: dict[str, str] | None = None, cwd: Path | None = None, timeout: float = 300) -> str:
    out = subprocess.run(
        [str(c) for c in cmd], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )
    if out.returncode != 0:
        pytest.fail(f"{' '.join(map(str, cmd))} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return out.stdout


def wheelhouse() -> Path:
    """Wheels of keyward's dependencies and build backend, downloaded from
    PyPI the first time (or when pyproject.toml's requirements change)."""
    project = tomllib.loads((PACKAGE_ROOT / "pyproject.toml").read_text())
    wanted = sorted(project["project"]["dependencies"] + project["build-system"]["requires"])
    tag = f"{sys.version_info.major}{sys.version_info.minor}-" + hashlib.sha256("\n".join(wanted).encode()).hexdigest()[:12]
    marker = WHEELHOUSE / f".ready-{tag}"
    if not marker.exists():
        WHEELHOUSE.mkdir(parents=True, exist_ok=True)
        sh(sys.executable, "-m", "pip", "download", "--quiet", "--cache-dir", CACHE, "--dest", WHEELHOUSE, *wanted)
        marker.touch()
    return WHEELHOUSE


def offline_env(wheels: Path) -> dict[str, str]:
    """pip (and build's isolated environment, made by pip) without PyPI."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(PIP_NO_INDEX="1", PIP_FIND_LINKS=str(wheels), PIP_DISABLE_PIP_VERSION_CHECK="1")
    return env


def fresh_venv(where: Path) -> Path:
    sh(sys.executable, "-m", "venv", where)
    return where / "bin" / "python"


def source_copy(where: Path) -> Path:
    return Path(
        shutil.copytree(
            PACKAGE_ROOT,
            where,
            ignore=shutil.ignore_patterns("__pycache__", "build", "dist", "*.egg-info", ".mypy_cache"),
        )
    )


def check_installed(python: Path, agent, cwd: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["KEYWARD_SOCKET"] = agent.socket
    out = sh(python, "-c", CHECK, env=env, cwd=cwd)
    assert out.split() == ["sk_installed_\u00e9", "sk_installed_\u00e9"], out


def test_pip_install_of_the_directory_and_of_the_built_wheel(agent, tmp_path, capsys):
    agent.put("prod/installed", "sk_installed_\u00e9".encode())
    wheels = wheelhouse()
    env = offline_env(wheels)
    empty = tmp_path / "elsewhere"
    empty.mkdir()

    # 1. pip install ./clients/python
    src = source_copy(tmp_path / "src")
    python = fresh_venv(tmp_path / "venv-dir")
    started = time.monotonic()
    sh(python, "-m", "pip", "install", "--quiet", src, env=env)
    dir_install = time.monotonic() - started
    check_installed(python, agent, empty)

    # 2. python -m build, then pip install the wheel.
    started = time.monotonic()
    sh(sys.executable, "-m", "build", "--outdir", tmp_path / "dist", src, env=env)
    build_time = time.monotonic() - started
    built = sorted(p.name for p in (tmp_path / "dist").iterdir())
    wheel_files = [p for p in (tmp_path / "dist").glob("keyward-*.whl")]
    assert len(wheel_files) == 1 and any(n.endswith(".tar.gz") for n in built), built
    wheel = wheel_files[0]
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in (
        "keyward/py.typed",
        "keyward/_proto/keys_pb2.py",
        "keyward/_proto/keys_pb2.pyi",
        "keyward/_proto/keys_pb2_grpc.py",
        "keyward/aio/__init__.py",
        "keyward/aio/client.py",
        "keyward/aio/handle.py",
        "keyward/contrib/__init__.py",
        "keyward/contrib/airflow.py",
    ):
        assert needed in names, f"{needed} missing from {wheel.name}: {sorted(names)}"
    assert not any(n.startswith(("tests/", "examples/")) for n in names), sorted(names)

    python = fresh_venv(tmp_path / "venv-wheel")
    started = time.monotonic()
    sh(python, "-m", "pip", "install", "--quiet", wheel, env=env)
    wheel_install = time.monotonic() - started
    check_installed(python, agent, empty)

    site = next((tmp_path / "venv-wheel" / "lib").glob("python3*/site-packages"))
    installed = sum(f.stat().st_size for f in (site / "keyward").rglob("*") if f.is_file())
    with capsys.disabled():
        print(
            f"\n[python install] pip install ./clients/python: {dir_install:.1f} s; python -m build (sdist + wheel): "
            f"{build_time:.1f} s; pip install {wheel.name}: {wheel_install:.1f} s; wheel {wheel.stat().st_size / 1024:.1f} KiB, "
            f"{installed / 1024:.0f} KiB installed (dependencies grpcio and protobuf from a local wheelhouse, no index)"
        )
