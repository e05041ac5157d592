"""`gpuacct-enforcer preempt` refuses a bad request in one line, exit 2, before it asks the
enforcer (a preemption that is granted: tests/allocator/test_reservations.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

GOOD = ["gat-carol", "1", "--for", "30m", "--node", "gpu01", "--reason", "deadline",
        "--url", "http://127.0.0.1:9"]


@pytest.mark.parametrize(("change", "said"), [
    ({1: "two"}, "'two': expected a number of GPUs such as 1"),
    ({3: "soon"}, "--for 'soon': expected a duration such as 30m"),
    ({7: ""}, "String should have at least 1 character"),
    ({0: "not a user!"}, "String should match pattern"),
])
def test_bad_arguments_are_one_line_and_exit_2(tmp_path: Path, change: dict[int, str],
                                               said: str) -> None:
    args = [change.get(i, a) for i, a in enumerate(GOOD)]
    config = tmp_path / "enforcer.yaml"
    config.write_text("auth:\n  webhook_token: secret-token-of-the-test\n")
    done = subprocess.run([sys.executable, "-m", "enforcer", "--config", str(config),
                           "preempt", *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done
    assert done.stderr.startswith("gpuacct-enforcer preempt: ") and said in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_an_enforcer_that_cannot_be_reached_is_named(tmp_path: Path) -> None:
    config = tmp_path / "enforcer.yaml"
    config.write_text("auth:\n  webhook_token: secret-token-of-the-test\n")
    done = subprocess.run([sys.executable, "-m", "enforcer", "--config", str(config),
                           "preempt", *GOOD], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "127.0.0.1:9" in done.stderr, done
