"""Which build runs: `--version` on every installed command, with the revision the wheel was
built from (an operator compares it with the control host's), and `gpuacct_build_info` on
/metrics (tested with each service's listener in test_listener.py)."""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

from gpuacct import __version__

ROOT = Path(__file__).resolve().parents[2]


def checkout_revision() -> str:
    """The revision this checkout is at; "unknown" for a copy without its history."""
    if not (ROOT / ".git").exists():
        return "unknown"
    return subprocess.run(["git", "-c", "safe.directory=*", "rev-parse", "--short=12", "HEAD"],
                          cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()


def test_every_installed_command_says_its_version_and_the_revision_built_from(
        installed_gpuacct: Path) -> None:
    commands = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert len(commands) >= 7
    for command in commands:
        done = subprocess.run([str(installed_gpuacct / "bin" / command), "--version"],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, (command, done.stderr)
        assert re.fullmatch(rf"{re.escape(command)} {re.escape(__version__)} \(revision "
                            rf"{checkout_revision()}, Python 3\.\d+\.\d+\)\n", done.stdout), \
            (command, done.stdout)
