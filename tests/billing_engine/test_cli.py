"""gpuacct-billing's operator commands, run as a person would, on a real ledger file."""

from __future__ import annotations

import csv
import io
import subprocess
import sys
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from gpuacct import store
from gpuacct.store import Target
from ledger import Ledger, UsageLine
from reports import export
from tests.fixtures.ledger import forge, sql


def _ledger_config(path: Target, tmp_path: Path) -> tuple[Path, Target]:
    ledger = Ledger(path)
    with ledger.batch():
        ledger.open_account("alice", Decimal(100), 1_700_000_000.0)
        ledger.open_account("bob", Decimal(100), 1_700_000_000.0)
    ledger.close()
    config = tmp_path / "gpuacct.yaml"
    config.write_text(f"billing:\n  ledger: {path}\n")
    return config, path


@pytest.fixture
def ledger_config(store_target: Target, tmp_path: Path) -> tuple[Path, Target]:
    """A config and its ledger with two accounts: a SQLite file, then a PostgreSQL database."""
    return _ledger_config(store_target, tmp_path)


@pytest.fixture
def file_ledger_config(tmp_path: Path) -> tuple[Path, Path]:
    config, path = _ledger_config(tmp_path / "ledger.sqlite3", tmp_path)
    return config, Path(path)


def cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "billing_engine", "--config", str(config), *args],
                          capture_output=True, text=True, timeout=30)


def snapshot(path: Target) -> list[tuple[object, ...]]:
    ledger = Ledger(path)
    try:
        return [*sql(ledger).execute("SELECT * FROM accounts ORDER BY name"),
                *sql(ledger).execute("SELECT * FROM transactions ORDER BY id")]
    finally:
        ledger.close()


def test_recharge_then_adjust(ledger_config: tuple[Path, Target]) -> None:
    config, path = ledger_config
    result = cli(config, "recharge", "alice", "50.25", "--reason", "grant 7")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "alice: recharge +50.25 -> balance 150.25"
    result = cli(config, "adjust", "alice", "-0.25", "--reason", "rounding")
    assert result.returncode == 0, result.stderr
    ledger = Ledger(path)
    assert ledger.balance("alice") == Decimal("150.00")
    kinds = [r[0] for r in sql(ledger).execute(
        "SELECT kind FROM transactions WHERE account = 'alice' ORDER BY id")]
    assert kinds == ["opening", "recharge", "adjustment"]
    assert ledger.invariant_violations() == []
    balances = cli(config, "balances").stdout
    assert "alice" in balances and "150.00" in balances and " ok" in balances


@pytest.mark.parametrize("amount, message", [
    ("-10", "is negative"), ("0", "must not be zero"), ("NaN", "not a finite number"),
    ("inf", "not a finite number"), ("lots", "is not a number"),
    ("1.001", "more than 2 decimal places"), ("1e12", "larger than the largest amount"),
])
def test_bad_recharge_is_refused_and_nothing_written(ledger_config: tuple[Path, Target],
                                                      amount: str, message: str) -> None:
    config, path = ledger_config
    before = snapshot(path)
    result = cli(config, "recharge", "alice", amount)
    assert result.returncode == 2
    assert message in result.stderr
    assert result.stderr.startswith("gpuacct-billing: recharge refused: ")
    assert "Traceback" not in result.stderr
    assert snapshot(path) == before


def test_unknown_account_is_refused(ledger_config: tuple[Path, Target]) -> None:
    config, path = ledger_config
    before = snapshot(path)
    result = cli(config, "recharge", "mallory", "10")
    assert result.returncode == 2
    assert "unknown account 'mallory'" in result.stderr and "account open" in result.stderr
    assert snapshot(path) == before


def test_adjust_needs_a_reason(ledger_config: tuple[Path, Target]) -> None:
    config, path = ledger_config
    before = snapshot(path)
    result = cli(config, "adjust", "bob", "5", "--reason", "  ")
    assert result.returncode == 2 and "a reason is required" in result.stderr
    assert snapshot(path) == before


def test_the_same_key_is_applied_once(ledger_config: tuple[Path, Target]) -> None:
    config, path = ledger_config
    assert cli(config, "recharge", "bob", "10", "--key", "invoice-17").returncode == 0
    result = cli(config, "recharge", "bob", "10", "--key", "invoice-17")
    assert result.returncode == 2 and "already used" in result.stderr
    assert Ledger(path).balance("bob") == Decimal(110)


def test_no_ledger_yet(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(f"billing:\n  ledger: {tmp_path / 'none.sqlite3'}\n")
    result = cli(config, "balances")
    assert result.returncode == 1 and "no ledger at" in result.stderr


def ts(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp())


def test_csv_export_exact_utf8_and_in_range(ledger_config: tuple[Path, Target],
                                           tmp_path: Path) -> None:
    config, path = ledger_config
    ledger = Ledger(path)
    lines = {
        "2026-10-31T23:59:00": UsageLine("alice", "too-early", "n1", "A100", Decimal(1),
                                         Decimal(0), Decimal("0.008333")),
        "2026-11-01T00:00:00": UsageLine("alice", "実験-1", "n1", "NVIDIA A100-SXM4-80GB",
                                         Decimal("59.999999871"), Decimal("12.34"),
                                         Decimal("0.502057"), Decimal("30.5"),
                                         Decimal("0.254167")),
        "2026-11-30T23:59:00": UsageLine("bob", "sid-4", "n2", "", Decimal(0),
                                         Decimal("0.01"), Decimal("0.000002")),
        "2026-12-01T00:00:00": UsageLine("bob", "too-late", "n2", "", Decimal(0), Decimal(1),
                                         Decimal("0.000167")),
    }
    with forge(ledger) as db:
        for end_text, ln in lines.items():
            end = ts(end_text)
            db.execute("INSERT INTO windows VALUES ($1, $2, $3, 1, $4)",
                       (end, end - 60, end, str(ln.cost)))
            db.execute("INSERT INTO usage_lines VALUES "
                       "($1, $2, $3, $4, $5, $6, $7, $8, 0, $9, $10, $11, NULL)",
                       (end, ln.user, ln.job, ln.node, ln.gpu_model, str(ln.gpu_seconds),
                        str(ln.cpu_core_seconds), str(ln.cost), str(ln.gpu_idle_seconds),
                        str(ln.idle_cost), ln.user))
    out = tmp_path / "usage.csv"
    result = cli(config, "export", "usage", "--from", "2026-11-01", "--to", "2026-12-01",
                 "--output", str(out))
    assert result.returncode == 0, result.stderr
    rows = list(csv.reader(io.StringIO(out.read_bytes().decode("utf-8"))))
    assert rows == [
        ["window_start", "window_end", "user", "job", "node", "gpu_model", "gpu_seconds",
         "cpu_core_seconds", "cost", "gpu_idle_seconds", "idle_cost", "account"],
        ["2026-10-31T23:59:00Z", "2026-11-01T00:00:00Z", "alice", "実験-1", "n1",
         "NVIDIA A100-SXM4-80GB", "59.999999871", "12.34", "0.502057", "30.5", "0.254167",
         "alice"],
        ["2026-11-30T23:58:00Z", "2026-11-30T23:59:00Z", "bob", "sid-4", "n2", "", "0", "0.01",
         "0.000002", "0", "0", "bob"],
    ]
    transactions = cli(config, "export", "transactions", "--from", "2023-01-01",
                       "--to", "2024-01-01")
    assert transactions.returncode == 0
    rows = list(csv.reader(io.StringIO(transactions.stdout)))
    assert rows[0] == ["id", "at", "account", "kind", "amount", "balance_after", "reason",
                       "window_end", "actor"]
    assert [r[2:6] for r in rows[1:]] == [["alice", "opening", "100", "100"],
                                           ["bob", "opening", "100", "100"]]


@pytest.mark.parametrize("args, message", [
    (["--from", "yesterday", "--to", "2026-12-01"], "'yesterday' is not a date"),
    (["--from", "2026-12-01", "--to", "2026-11-01"], "is not after"),
])
def test_bad_export_ranges(ledger_config: tuple[Path, Target], args: list[str],
                           message: str) -> None:
    config, _ = ledger_config
    result = cli(config, "export", "usage", *args)
    assert result.returncode == 2 and message in result.stderr


def test_backup_is_a_whole_copy_and_never_overwrites(
        file_ledger_config: tuple[Path, Path]) -> None:
    config, path = file_ledger_config
    assert cli(config, "recharge", "alice", "12.50").returncode == 0
    writer = store.connect(path)  # a billing engine in the middle of a window: backup works
    writer.begin_write()
    copy = path.with_name("backup.sqlite3")
    try:
        done = cli(config, "backup", str(copy))
    finally:
        writer.rollback()
        writer.close()
    assert done.returncode == 0, done.stderr
    assert f"copied to {copy}" in done.stdout
    assert snapshot(copy) == snapshot(path)
    assert Ledger(copy).invariant_violations() == []
    again = cli(config, "backup", str(copy))
    assert again.returncode == 2
    assert again.stderr == f"gpuacct-billing: backup refused: {copy} exists; choose a new file\n"
    nowhere = cli(config, "backup", str(path.parent / "no-such-dir" / "b.sqlite3"))
    assert nowhere.returncode == 2 and "backup refused: cannot write" in nowhere.stderr
    assert not list(path.parent.glob(".*.partial"))


def test_a_ledger_in_postgresql_is_backed_up_by_its_server(pg_database: str,
                                                           tmp_path: Path) -> None:
    config, _ = _ledger_config(pg_database, tmp_path)
    done = cli(config, "backup", str(tmp_path / "b.sqlite3"))
    assert (done.returncode, done.stderr) == (2, "gpuacct-billing: backup refused: the ledger "
                                              "is in PostgreSQL: back it up with pg_dump (or "
                                              "the server's own backups)\n")
    assert not (tmp_path / "b.sqlite3").exists()


def test_names_people_wrote_reach_a_spreadsheet_as_text_never_as_formulas() -> None:
    """OWASP's CSV injection: a job, node or reason a user chose that starts like a formula is
    written with a leading apostrophe; numbers (a negative amount) stay numbers."""
    out = io.StringIO()
    export.write_csv(out, "usage", [["t0", "t1", "@alice", '=HYPERLINK("http://x","y")',
                                     "+node", "-model", "60", "0", "0.5", "0", "0"]])
    export.write_csv(out, "transactions", [["1", "t", "bob", "adjustment", "-5.00", "95.00",
                                            "\tcmd|' /C calc'!A0", ""]])
    rows = list(csv.reader(io.StringIO(out.getvalue())))
    assert rows[1][2:6] == ["'@alice", '\'=HYPERLINK("http://x","y")', "'+node", "'-model"]
    assert rows[3][4] == "-5.00" and rows[3][6] == "'\tcmd|' /C calc'!A0"


def test_accounts_are_opened_funded_and_filled_from_the_command_line(
        ledger_config: tuple[Path, Target], tmp_path: Path) -> None:
    config, _ = ledger_config
    steps = [("account", "open", "vision-lab", "--group", "--owner", "pi", "--balance", "200",
              "--actor", "fin"),
             ("account", "add-member", "vision-lab", "alice", "--actor", "fin"),
             ("account", "limit", "vision-lab", "alice", "40", "--actor", "fin"),
             ("recharge", "vision-lab", "50", "--reason", "grant 3", "--actor", "fin"),
             ("account", "freeze", "vision-lab", "--reason", "audit", "--actor", "fin"),
             ("account", "thaw", "vision-lab", "--actor", "fin")]
    for step in steps:
        result = cli(config, *step)
        assert result.returncode == 0, (step, result.stderr)
    shown = cli(config, "account", "show", "vision-lab").stdout
    assert "vision-lab (group, open)" in shown and "owner    pi" in shown
    assert "balance  250" in shown and "alice" in shown and "of 40" in shown
    audit = cli(config, "audit").stdout.splitlines()
    assert [line.split()[1:3] for line in audit[1:7]] == [  # newest first, each with its actor
        ["fin", "account.open"], ["fin", "account.frozen"], ["fin", "recharge"],
        ["fin", "member.limit"], ["fin", "membership"], ["fin", "account.open"]]
    out = tmp_path / "statement.html"
    result = cli(config, "statement", "--account", "vision-lab",
                 "--month", datetime.now(UTC).strftime("%Y-%m"), "--format", "html",
                 "--output", str(out))
    assert result.returncode == 0, result.stderr
    assert "Statement of account vision-lab" in out.read_text() and "grant 3" in out.read_text()


@pytest.mark.parametrize(("args", "problem"), [
    (("account", "add-member", "nowhere", "alice"), "unknown account 'nowhere'"),
    (("account", "open", "bob"), "the account 'bob' exists already"),
    (("account", "open", "lab", "--group", "--balance", "ten"), "'ten' is not a number"),
    (("account", "limit", "alice", "alice", "lots"), "'lots' is not a number"),
    (("account", "limit", "alice", "bob", "5"), "bob is not a member of alice"),
    (("account", "add-member", "alice", "bob"), "alice's personal account"),
    (("account", "remove-member", "alice", "bob"), "bob is not a member of alice"),
    (("statement", "--account", "alice", "--month", "2026-13"), "is not a month like 2026-11"),
    (("statement", "--account", "nobody", "--month", "2026-11"), "unknown account 'nobody'"),
    (("audit", "--since", "yesterday"), "is not a date like"),
    (("account", "thaw", "alice"), "is open already"),
])
def test_bad_account_commands_say_why_and_write_nothing(ledger_config: tuple[Path, Target],
                                                        args: tuple[str, ...],
                                                        problem: str) -> None:
    config, path = ledger_config
    before = snapshot(path)
    result = cli(config, *args)
    assert result.returncode == 2, result.stdout
    assert problem in result.stderr and "Traceback" not in result.stderr
    assert snapshot(path) == before


def test_a_member_of_one_group_is_moved_only_when_asked(ledger_config: tuple[Path, Target]) -> None:
    config, _ = ledger_config
    for name in ("lab-a", "lab-b"):
        assert cli(config, "account", "open", name, "--group").returncode == 0
    assert cli(config, "account", "add-member", "lab-a", "bob").returncode == 0
    refused = cli(config, "account", "add-member", "lab-b", "bob")
    assert refused.returncode == 2
    assert "bob is charged to lab-a; a user is charged to one account" in refused.stderr
    assert cli(config, "account", "add-member", "lab-b", "bob", "--move").returncode == 0
    assert "bob" in cli(config, "account", "show", "lab-b").stdout
    assert "bob" not in cli(config, "account", "show", "lab-a").stdout


def test_members_set_in_the_config_are_changed_there_only(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite3"
    Ledger(path).close()
    config = tmp_path / "gpuacct.yaml"
    config.write_text(f"billing:\n  ledger: {path}\n  accounts:\n    lab:\n"
                      "      members: [alice]\n")
    assert cli(config, "account", "open", "lab", "--group").returncode == 0
    result = cli(config, "account", "add-member", "lab", "bob")
    assert result.returncode == 2
    assert "lab's members come from billing.accounts in the config" in result.stderr
