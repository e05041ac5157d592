"""Every service's command line has one shape: `gpuacct-<service> [--config FILE] COMMAND`,
`run` explicit, its options --web.listen-address and -v."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SERVICES = {"exporter": "gpuacct-exporter", "billing_engine": "gpuacct-billing",
            "enforcer": "gpuacct-enforcer", "web": "gpuacct-web"}


def cli(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                          timeout=30)


@pytest.mark.parametrize("module", SERVICES)
def test_every_service_has_run_with_the_same_options(module: str) -> None:
    top = cli(module, "--help")
    assert top.returncode == 0 and "--config" in top.stdout and "run" in top.stdout
    run = cli(module, "run", "--help")
    assert run.returncode == 0, run.stderr
    assert "--web.listen-address HOST:PORT" in run.stdout and "--verbose" in run.stdout


@pytest.mark.parametrize("module", ["billing_engine", "enforcer", "web"])
def test_a_service_without_a_command_says_what_to_do(module: str) -> None:
    bare = cli(module)
    assert bare.returncode == 2
    assert f"{SERVICES[module]}: say what to do, e.g. `{SERVICES[module]} run`" in bare.stderr
    assert "Traceback" not in bare.stderr


def test_the_exporter_without_a_command_still_runs(tmp_path: Path) -> None:
    """Older units start it bare: it takes the run options there, before any command."""
    bad = tmp_path / "gpuacct.yaml"
    bad.write_text("exporter:\n  interval_seconds: -1\n")
    for args in ([], ["run"]):  # both reach start-up, which refuses the config the same way
        result = cli("exporter", "--config", str(bad), "--web.listen-address", "127.0.0.1:1",
                     *args)
        assert result.returncode == 2, result.stderr
        assert "exporter.interval_seconds: -1 is not valid" in result.stderr
    listen = cli("exporter", "--web.listen-address", "nonsense", "run")
    assert listen.returncode != 0 and "--web.listen-address 'nonsense'" in listen.stderr
