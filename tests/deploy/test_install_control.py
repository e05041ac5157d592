"""deploy/install-control.sh refuses what it cannot do in one line, before it changes anything
(the whole install it makes: test_whole_install.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).parents[2]
pytestmark = [pytest.mark.root]


@pytest.mark.parametrize(("args", "said"), [
    ([], "install-control.sh: name this host as nodes and users reach it: --host NAME"),
    (["--host"], "install-control.sh: --host needs a value"),
    (["--frobnicate"], "install-control.sh: unknown option --frobnicate (try --help)"),
    (["--host", "c.lab", "--wheelhouse", "/nonexistent"],
     "install-control.sh: no gpuacct wheel in /nonexistent"),
])
def test_bad_arguments_are_one_line_and_exit_2(args: list[str], said: str) -> None:
    done = subprocess.run([str(REPO / "deploy" / "install-control.sh"), *args],
                          capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout, done.stderr.strip()) == (2, "", said)


def test_help_names_every_option() -> None:
    done = subprocess.run([str(REPO / "deploy" / "install-control.sh"), "--help"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    for option in ("--host", "--wheelhouse", "--no-start"):
        assert option in done.stdout
