"""The import contract in pyproject.toml (import-linter): it holds on this tree and breaks on a
planted violation of each of its rules."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

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


def test_a_core_module_importing_a_service_breaks_it(tmp_path: Path) -> None:
    tree = copy_tree(tmp_path)
    (tree / "gpuacct" / "planted.py").write_text("from web.app import create_app\n")
    result = lint(tree)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "the core, ledger, reports and jobstore import no service BROKEN" in result.stdout
    assert "gpuacct.planted -> web.app" in result.stdout
    assert "Contracts: 3 kept, 1 broken." in result.stdout


def test_the_web_importing_the_engine_breaks_it(tmp_path: Path) -> None:
    tree = copy_tree(tmp_path)
    (tree / "web" / "planted.py").write_text("from billing_engine.engine import Engine\n")
    result = lint(tree)
    assert result.returncode == 1
    assert ("the web imports no billing engine: only ledger, reports, jobstore BROKEN"
            in result.stdout)
    assert "web.planted -> billing_engine.engine" in result.stdout


def test_the_ledger_importing_the_engine_breaks_it(tmp_path: Path) -> None:
    tree = copy_tree(tmp_path)
    (tree / "reports" / "planted.py").write_text("from billing_engine import pricing\n")
    result = lint(tree)
    assert result.returncode == 1
    assert "the core, ledger, reports and jobstore import no service BROKEN" in result.stdout
    assert "reports.planted -> billing_engine.pricing" in result.stdout
