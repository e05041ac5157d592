"""The import contract in pyproject.toml (import-linter): it holds on this tree and breaks on a
planted violation of each of its rules."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT = Path(sys.executable).parent / "lint-imports"
PACKAGES = ("gpuacct", "exporter", "billing_engine", "ledger", "reports", "jobstore", "enforcer",
            "allocator", "web", "stack", "rules")


def lint(tree: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(tree), "NO_COLOR": "1"}
    return subprocess.run([str(LINT), "--config", str(tree / "pyproject.toml"), "--no-cache"],
                          cwd=tree, env=env, capture_output=True, text=True, timeout=120)


def copy_tree(dest: Path) -> Path:
    shutil.copy(ROOT / "pyproject.toml", dest)
    for package in PACKAGES:
        shutil.copytree(ROOT / package, dest / package,
                        ignore=shutil.ignore_patterns("__pycache__", "templates", "*.yml"))
    return dest


def test_the_contract_holds_on_this_tree(tmp_path: Path) -> None:
    result = lint(copy_tree(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 kept, 0 broken" in result.stdout


CORE = "the core, ledger, reports and jobstore import no service"
WEB = "the web imports no billing engine: only ledger, reports, jobstore"
PLANTED = {  # a module planted in a package, what it imports, the rule it breaks
    "the core imports the web": ("gpuacct", "from web.app import create_app", CORE,
                                 "gpuacct.planted -> web.app"),
    "the web imports the engine": ("web", "from billing_engine.engine import Engine", WEB,
                                   "web.planted -> billing_engine.engine"),
    "the reports import the engine": ("reports", "from billing_engine import pricing", CORE,
                                      "reports.planted -> billing_engine.pricing"),
}


@pytest.mark.parametrize("case", PLANTED)
def test_a_planted_violation_breaks_its_rule_alone(tmp_path: Path, case: str) -> None:
    package, line, rule, chain = PLANTED[case]
    tree = copy_tree(tmp_path)
    (tree / package / "planted.py").write_text(line + "\n")
    result = lint(tree)
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"{rule} BROKEN" in result.stdout
    assert chain in result.stdout
    assert "Contracts: 3 kept, 1 broken." in result.stdout
