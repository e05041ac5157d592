"""The wheelhouse the control host gives its nodes: gpuacct's wheel and one of every dependency,
at the versions the control host itself runs, so a node installs with no package index
(`install-node.sh --bundle`, pip --no-index)."""

from __future__ import annotations

import importlib.metadata
import re
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
        done = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check",
             "--wheel-dir", str(wheels), "-c", str(constraints), str(source)],
            capture_output=True, text=True, timeout=1800, check=False)
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
