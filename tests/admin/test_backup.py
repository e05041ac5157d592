"""`gpuacct-admin backup` and `restore` on a control host's real stores (the ledger, the jobs,
the enforcer's, the allocator's, the notices'), as the installed command runs them: folders
complete or absent, private, pruned to `--keep`, checked before a restore, never deleting what
a restore replaces; every bad input named."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

import pytest
import yaml

from allocator.store import AllocationStore
from enforcer.notices import Notices
from enforcer.store import Store
from gpuacct.config import NotificationSettings
from jobstore.store import JobStore
from ledger import Ledger

pytestmark = [pytest.mark.root]


def admin(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "admin", "--config", str(config), *args],
                          capture_output=True, text=True, timeout=120)


def control_host(tmp_path: Path, name: str = "host") -> Path:
    """A config placing every store under tmp_path/name, and those stores made."""
    state = tmp_path / name
    state.mkdir(mode=0o700)
    config = tmp_path / f"{name}.yaml"
    config.write_text(yaml.safe_dump({
        "billing": {"ledger": str(state / "ledger.sqlite3")},
        "enforcer": {"database": str(state / "enforcer.sqlite3")}}))
    return config


def make_stores(state: Path, balance: str) -> None:
    ledger = Ledger(state / "ledger.sqlite3")
    ledger.open_account("alice", Decimal(balance), time.time())
    ledger.close()
    JobStore(state / "jobs.sqlite3").close()
    Store(state / "enforcer.sqlite3").close()
    AllocationStore(state / "allocator.sqlite3").close()
    Notices(state / "notices.sqlite3", NotificationSettings(), None).close()


def balance(ledger_file: Path) -> Decimal:
    ledger = Ledger(ledger_file)
    try:
        return ledger.balances()["alice"]
    finally:
        ledger.close()


def next_second() -> None:
    """Backup folders are named by the second: wait for the clock to reach the next one."""
    start = int(time.time())
    while int(time.time()) == start:
        time.sleep(0.05)


def test_every_store_is_backed_up_pruned_and_restored_in_place(tmp_path: Path) -> None:
    config = control_host(tmp_path)
    state = tmp_path / "host"
    make_stores(state, "100.00")
    backups = tmp_path / "backups"
    for _ in range(3):
        next_second()
        done = admin(config, "backup", str(backups), "--keep", "2")
        assert done.returncode == 0, done.stderr
        assert "backed up ledger, jobs, enforcer, allocator, notices into" in done.stdout
    folders = sorted(backups.iterdir())
    assert len(folders) == 2 and all(f.name.startswith("gpuacct-") for f in folders)
    newest = folders[-1]
    assert newest.stat().st_mode & 0o777 == 0o700
    files = {p.name: p.stat().st_mode & 0o777 for p in newest.iterdir()}
    assert files == {"MANIFEST.json": 0o600, "ledger.sqlite3": 0o600, "jobs.sqlite3": 0o600,
                     "enforcer.sqlite3": 0o600, "allocator.sqlite3": 0o600,
                     "notices.sqlite3": 0o600}
    manifest = json.loads((newest / "MANIFEST.json").read_text())
    assert manifest["stores"]["ledger"]["from"] == str(state / "ledger.sqlite3")

    # The ledger changes after the backup; the restore brings back the backed-up one, and
    # keeps what it replaced beside it.
    ledger = Ledger(state / "ledger.sqlite3")
    ledger.post("alice", "recharge", Decimal("5.00"), time.time(), "after-the-backup")
    ledger.close()
    restored = admin(config, "restore", str(newest))
    assert restored.returncode == 0, restored.stderr
    assert balance(state / "ledger.sqlite3") == Decimal("100.00")
    [aside] = state.glob("ledger.sqlite3.before-restore-*[0-9]Z")
    assert balance(aside) == Decimal("105.00")
    assert (state / "ledger.sqlite3").stat().st_mode & 0o777 == 0o600


def test_a_tampered_or_foreign_folder_is_refused_and_nothing_is_replaced(
        tmp_path: Path) -> None:
    config = control_host(tmp_path)
    state = tmp_path / "host"
    make_stores(state, "100.00")
    done = admin(config, "backup", str(tmp_path / "backups"))
    assert done.returncode == 0, done.stderr
    [folder] = (tmp_path / "backups").iterdir()
    before = sorted(p.name for p in state.iterdir())

    not_a_backup = admin(config, "restore", str(tmp_path))
    assert not_a_backup.returncode == 2
    assert "is not a gpuacct backup: MANIFEST.json" in not_a_backup.stderr
    with (folder / "jobs.sqlite3").open("ab") as f:
        f.write(b"\0")
    tampered = admin(config, "restore", str(folder))
    assert tampered.returncode == 2 and "not what was backed up" in tampered.stderr
    assert sorted(p.name for p in state.iterdir()) == before  # nothing set aside or replaced
    for result in (not_a_backup, tampered):
        assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("args", "problem"), [
    (["backup", "DIR", "--keep", "0"], "'0': a whole number of backups, 1 or more"),
    (["backup", "DIR", "--keep", "-1"], "a whole number of backups"),
    (["restore"], "the following arguments are required: BACKUP"),
    ([], "say what to do"),
])
def test_bad_arguments_are_named(tmp_path: Path, args: list[str], problem: str) -> None:
    config = control_host(tmp_path)
    done = admin(config, *[str(tmp_path / "b") if a == "DIR" else a for a in args])
    assert done.returncode == 2 and problem in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_a_host_without_a_ledger_has_nothing_to_back_up(tmp_path: Path) -> None:
    config = control_host(tmp_path)
    done = admin(config, "backup", str(tmp_path / "backups"))
    assert done.returncode == 2
    assert "no ledger at" in done.stderr and "nothing worth a backup" in done.stderr
    assert list((tmp_path / "backups").iterdir()) == []  # no partial folder left


@pytest.mark.integration
def test_stores_in_postgresql_are_dumped_and_their_restore_is_named(
        tmp_path: Path, pg_database: str) -> None:
    """Every store in one PostgreSQL database: one pg_dump of it, which pg_restore reads; a
    restore says how to restore it rather than half-doing it."""
    config = tmp_path / "pg.yaml"
    config.write_text(yaml.safe_dump({"billing": {"ledger": pg_database},
                                      "enforcer": {"database": pg_database}}))
    ledger = Ledger(pg_database)
    ledger.open_account("alice", Decimal("42.00"), time.time())
    ledger.close()
    Store(pg_database).close()
    done = admin(config, "backup", str(tmp_path / "backups"))
    assert done.returncode == 0, done.stderr
    [folder] = (tmp_path / "backups").iterdir()
    manifest = json.loads((folder / "MANIFEST.json").read_text())
    assert {s["engine"] for s in manifest["stores"].values()} == {"postgresql"}
    assert {s["file"] for s in manifest["stores"].values()} == {"postgresql-1.dump"}
    listed = subprocess.run(["pg_restore", "--list", str(folder / "postgresql-1.dump")],
                            capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0 and "TABLE ledger accounts" in listed.stdout, listed.stderr
    refused = admin(config, "restore", str(folder))
    assert refused.returncode == 2 and "pg_restore --clean" in refused.stderr, refused.stderr
