"""`gpuacct-admin backup` while gpuacct-billing bills, and `restore` onto a new control host
(other paths, the old host's ledger gone with it): the new host bills on from the backup's last
window, every window once, and the ledger reaches exactly what the exporter counted."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from gpuacct.store import Target
from ledger import Ledger
from tests.billing_engine.conftest import WINDOW, Rig
from tests.billing_engine.test_billing import check_ledger, start_job, stop_job
from tests.billing_engine.test_engine_process import engine_process
from tests.fixtures.ledger import sql
from tests.fixtures.servers import wait_for
from tests.fixtures.users import Processes, UnixUser

pytestmark = [pytest.mark.integration, pytest.mark.root]


def admin(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "admin", "--config", str(config), *args],
                          capture_output=True, text=True, timeout=120)


def last_window(ledger_path: Target) -> int:
    return int(sql(ledger_path).execute("SELECT COALESCE(MAX(window_end), 0) FROM windows")
               .fetchone()[0])


@pytest.mark.parametrize("store_target", ["sqlite"], indirect=True)
def test_a_backup_taken_while_billing_restores_to_a_new_host_that_bills_on_exactly(
        rig: Rig, processes: Processes, test_users: dict[str, UnixUser],
        tmp_path: Path) -> None:
    alice, bob = test_users["alice"], test_users["bob"]
    jobs = [start_job(rig, processes, alice, "before", gpu=0)]
    engine, _ = engine_process(rig, "billing", tmp_path / "billing.log")
    engine.start().wait_ready()
    old_ledger = rig.ledger_path
    wait_for(lambda: last_window(old_ledger) > 0, timeout=20, what="a first billed window")
    jobs.append(start_job(rig, processes, bob, "during", gpu=1))

    taken = admin(rig.config_path, "backup", str(tmp_path / "backups"), "--keep", "3")
    assert taken.returncode == 0, taken.stderr
    [folder] = (tmp_path / "backups").iterdir()
    assert f"backed up ledger, jobs into {folder}" in taken.stdout
    backed_up = last_window(folder / "ledger.sqlite3")
    assert backed_up > 0

    # The old host bills on past the backup, then dies with its ledger.
    wait_for(lambda: last_window(old_ledger) >= backed_up + 2 * WINDOW, timeout=20,
             what="windows billed after the backup")
    refused = admin(rig.config_path, "restore", str(folder))  # not under a running engine
    assert refused.returncode == 2 and "gpuacct-billing" in refused.stderr, refused.stderr
    assert "holds the ledger's lease: stop it" in refused.stderr
    engine.stop()
    for path in Path(old_ledger).parent.glob("*.sqlite3*"):
        path.unlink()

    # The new host: its own paths, the same Prometheus, the backup restored there.
    new_host = tmp_path / "new-host"
    rig.config["billing"]["ledger"] = str(new_host / "ledger.sqlite3")
    rig.config["enforcer"] = {"database": str(new_host / "enforcer.sqlite3")}
    rig.config_path.write_text(yaml.safe_dump(rig.config))
    restored = admin(rig.config_path, "restore", str(folder))
    assert restored.returncode == 0, restored.stderr
    assert f"restored ledger, jobs from {folder}" in restored.stdout
    assert (new_host / "ledger.sqlite3").stat().st_mode & 0o777 == 0o600
    assert last_window(rig.ledger_path) == backed_up

    engine, _ = engine_process(rig, "billing-new-host", tmp_path / "billing-new.log")
    engine.start().wait_ready()
    try:
        wait_for(lambda: last_window(rig.ledger_path) > backed_up + 2 * WINDOW, timeout=30,
                 what="the new host to bill on")
        for job in jobs:
            stop_job(rig, job)
        truth = rig.wait_until_billed(timeout=40)  # nothing lost, nothing twice
    finally:
        engine.stop()
    assert {(u, j) for u, j, _ in truth} >= {(alice.name, "before"), (bob.name, "during")}
    check_ledger(rig).close()  # every window once and contiguous, balances = usage x price
    ledger = Ledger(rig.ledger_path)
    assert ledger.invariant_violations() == []
    ledger.close()
