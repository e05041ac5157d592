"""The import contract in pyproject.toml (import-linter): it holds on this tree, it breaks on a
planted violation, and its list of billing-engine modules the web may not import is whole."""

from __future__ import annotations

import os
import pkgutil
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import billing_engine

ROOT = Path(__file__).resolve().parents[2]
LINT = Path(sys.executable).parent / "lint-imports"
PACKAGES = ("gpuacct", "exporter", "billing_engine", "enforcer", "web", "stack", "rules")


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
    assert "the core imports no service BROKEN" in result.stdout
    assert "gpuacct.planted -> web.app" in result.stdout
    assert "Contracts: 3 kept, 1 broken." in result.stdout


def test_the_web_importing_the_engine_breaks_it(tmp_path: Path) -> None:
    tree = copy_tree(tmp_path)
    (tree / "web" / "planted.py").write_text("from billing_engine.engine import Engine\n")
    result = lint(tree)
    assert result.returncode == 1
    assert "the web reads the billing engine only through its ledger BROKEN" in result.stdout


def test_every_billing_engine_module_but_the_ledger_is_forbidden_to_the_web() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    [web] = [c for c in config["contracts"] if c["source_modules"] == ["web"]]
    modules = {f"billing_engine.{m.name}" for m in pkgutil.iter_modules(billing_engine.__path__)}
    assert set(web["forbidden_modules"]) == modules - {"billing_engine.ledger"}
