"""The wheelhouse the control host gives its nodes: gpuacct's wheel and one of every dependency,
at the versions the control host itself runs, so a node installs with no package index
(`install-node.sh --bundle`, pip --no-index)."""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from admin.backup import AdminError

DEFAULT = Path("/opt/gpuacct/wheelhouse")


def pins() -> list[str]:
    """`name==version` for every package this installation runs, gpuacct's own aside."""
    found = {re.sub(r"[-_.]+", "-", d.metadata["Name"]).lower(): d.version
             for d in importlib.metadata.distributions() if d.metadata["Name"]}
    return [f"{name}=={version}" for name, version in sorted(found.items())
            if name not in ("gpuacct", "pip", "setuptools", "wheel")]


# What a checkout holds that a wheel is not built from.
NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info",
                                    "__pycache__", ".mypy_cache", ".ruff_cache",
                                    ".pytest_cache", ".hypothesis", "node_modules")


def buildable(source: Path, work: Path) -> tuple[Path, dict[str, str]]:
    """What pip builds from, and its environment: a checkout is copied first (pip builds in
    the source tree: two builds of one checkout at once would share its build/ folder, and a
    read-only checkout could not be built at all), its git revision passed on for the wheel's
    build info."""
    env = dict(os.environ)
    if not source.is_dir():
        return source, env
    try:
        found = subprocess.run(["git", "-c", "safe.directory=*", "rev-parse", "--short=12",
                                "HEAD"], capture_output=True, text=True, timeout=30,
                               check=False, cwd=source)
        if found.returncode == 0 and found.stdout.strip():
            env["GPUACCT_BUILD_REVISION"] = found.stdout.strip()
    except OSError:
        pass  # no git: the wheel says "unknown"
    copy = work / "source"
    shutil.copytree(source, copy, ignore=NOT_SOURCE, symlinks=True)
    return copy, env


def build(source: Path, into: Path) -> list[str]:
    """Wheels of gpuacct from `source` (a checkout or a wheel) and of its dependencies, into
    `into`, replaced whole once every wheel is there; the wheels' names."""
    if not source.exists():
        raise AdminError(f"{source}: no such checkout or wheel")
    into.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=into.parent, prefix=".wheelhouse-") as work:
        constraints = Path(work) / "constraints.txt"
        constraints.write_text("\n".join(pins()) + "\n", encoding="utf-8")
        wheels = Path(work) / "wheels"
        built, env = buildable(source.resolve(), Path(work))
        done = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check",
             "--wheel-dir", str(wheels), "-c", str(constraints), str(built)],
            capture_output=True, text=True, timeout=1800, check=False, env=env)
        if done.returncode != 0:
            tail = " / ".join(done.stderr.strip().splitlines()[-3:])
            raise AdminError(f"pip could not build the wheels: {tail}")
        names = sorted(p.name for p in wheels.glob("*.whl"))
        if not any(n.startswith("gpuacct-") for n in names):
            raise AdminError(f"{source} gave no gpuacct wheel")
        old = Path(work) / "old"
        if into.exists():
            into.rename(old)
        wheels.rename(into)  # the old one goes with the work folder
        into.chmod(0o755)
    return names


def check(wheelhouse: Path) -> Path:
    """The wheelhouse, if it holds a gpuacct wheel."""
    if not any(wheelhouse.glob("gpuacct-*.whl")):
        raise AdminError(f"no gpuacct wheel in {wheelhouse}: make the wheelhouse first "
                         f"(gpuacct-admin wheelhouse CHECKOUT-OR-WHEEL --into {wheelhouse})")
    return wheelhouse
