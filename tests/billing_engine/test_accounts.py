"""Accounts apart from users, on a real ledger file: a group account pays for its members, by
the membership in force at each window's start; accounts opened and funded before any usage;
unknown users by `unknown_users`; members' monthly limits; statements equal to the ledger."""

from __future__ import annotations

import csv
import io
import os
from decimal import Decimal
from pathlib import Path

import pypdfium2  # type: ignore[import-untyped]
import pytest

from billing_engine.accounts import AccountPlans
from billing_engine.metrics import build_registry
from gpuacct.config import BillingSettings, ConfigError, settings_from_mapping
from gpuacct.periods import month_start, parse_month
from gpuacct.store import Target
from gpuacct.tiers import account_tier
from ledger import (
    UNASSIGNED,
    AccountPlan,
    Ledger,
    LedgerError,
    UsageLine,
    WindowBill,
)
from reports.statement import as_csv, as_html, as_pdf
from tests.fixtures.ledger import sql

NOV = 1793491200  # 2026-11-01T00:00:00Z
A100 = "NVIDIA A100-SXM4-80GB"
SCREENSHOTS = Path(os.environ.get("GPUACCT_SCREENSHOTS", "/tmp/gpuacct-screenshots"))


def line(user: str, cost: str, job: str = "train") -> UsageLine:
    return UsageLine(user, job, "n1:9835", A100, Decimal(60), Decimal(1), Decimal(cost))


def bill(ledger: Ledger, end: int, lines: list[UsageLine], unknown_users: str = "open",
         opening: Decimal = Decimal(100)) -> None:
    assert ledger.acquire_lease("test", 60, now=None)
    last = ledger.last_window()
    assert ledger.commit_window(WindowBill(
        end=end, previous=end - 60 if last is None else last, expected_last=last, lines=lines,
        cursors={}, price_effective=0, holder="test", opening_balance=opening,
        trial_mode=False, reason=f"window {end}", unknown_users=unknown_users))


def lab(members: set[str], limits: dict[str, Decimal] | None = None) -> AccountPlan:
    return AccountPlan("vision-lab", "pi", frozenset(members), limits or {}, Decimal(500))


@pytest.fixture
def ledger(store_target: Target) -> Ledger:
    return Ledger(store_target)


def charges_by_account(ledger: Ledger) -> dict[str, Decimal]:
    sums: dict[str, Decimal] = {}
    for account, amount in sql(ledger).execute(
            "SELECT account, amount FROM transactions WHERE kind = 'charge'"):
        sums[account] = sums.get(account, Decimal(0)) - Decimal(amount)
    return sums


def test_a_group_account_pays_for_its_three_members_over_five_windows(ledger: Ledger) -> None:
    assert ledger.sync_accounts([lab({"alice", "bob", "carol"})], NOV - 120, "config") == 4
    assert ledger.sync_accounts([lab({"alice", "bob", "carol"})], NOV - 60, "config") == 0
    costs = {"alice": "0.500000", "bob": "0.250001", "carol": "0.125000"}
    for i in range(5):
        bill(ledger, NOV + 60 * (i + 1), [line(u, c) for u, c in costs.items()])
    spent = sum(Decimal(c) for c in costs.values()) * 5
    assert ledger.balances() == {"vision-lab": Decimal(500) - spent}  # nobody's own account
    assert charges_by_account(ledger) == {"vision-lab": spent}
    assert ledger.invariant_violations() == []
    # Each member's month, from the lines: what statements and monthly limits read.
    months = {m.user: m.cost for m in ledger.member_months(NOV, "vision-lab")}
    assert months == {u: Decimal(c) * 5 for u, c in costs.items()}
    assert {r[0] for r in sql(ledger).execute("SELECT DISTINCT account FROM usage_lines")} == {
        "vision-lab"}


def test_the_group_balance_decides_every_members_tier_on_metrics(tmp_path: Path) -> None:
    settings = BillingSettings(ledger=tmp_path / "ledger.sqlite3", accounts={
        "vision-lab": {"members": ["alice", "bob", "carol"], "owner": "pi",
                       "opening_balance": "30", "member_monthly_limits": {"carol": "0.2"},
                       "thresholds": {"warning": 50}}})
    ledger = Ledger(settings.ledger)
    ledger.sync_accounts(AccountPlans(settings)(), NOV - 60, "config")
    bill(ledger, NOV, [line("alice", "1"), line("carol", "0.25")])
    registry = build_registry(settings, None, ledger)

    def sample(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)
    for user in ("alice", "bob", "carol"):
        assert sample("gpuacct_account_balance", user=user, account="vision-lab") == 28.75
        assert sample("gpuacct_account_threshold", user=user, account="vision-lab",
                      tier="warning") == 50  # the account's own thresholds
    assert sample("gpuacct_ledger_account_balance", account="vision-lab", kind="group",
                  status="open") == 28.75
    # The month's spending is as of now: the lines of November are not this month's.
    ledger.set_member_limit("vision-lab", "carol", Decimal("0.2"), "test", NOV)
    assert account_tier(settings, "vision-lab", Decimal("28.75")) == "warning"


def test_membership_changed_mid_day_charges_each_window_by_its_start(ledger: Ledger) -> None:
    """bob moves from vision-lab to nlp-lab at 12:00: windows starting before are vision's,
    from then on nlp's; each account's statement shows his part."""
    ledger.sync_accounts([lab({"bob"}), AccountPlan("nlp-lab", "pi2", frozenset(), {},
                                                    Decimal(100))], NOV - 60, "config")
    noon = NOV + 12 * 3600
    bill(ledger, noon - 60, [line("bob", "1.000000")])
    bill(ledger, noon, [line("bob", "2.000000")])  # starts 11:59: vision's
    ledger.set_membership("bob", "nlp-lab", "admin", noon)
    bill(ledger, noon + 60, [line("bob", "4.000000")])  # starts 12:00: nlp's
    bill(ledger, noon + 120, [line("bob", "8.000000")])
    assert {r for r in sql(ledger).execute(
        "SELECT window_end, account FROM usage_lines ORDER BY window_end")} == {
        (noon - 60, "vision-lab"), (noon, "vision-lab"), (noon + 60, "nlp-lab"),
        (noon + 120, "nlp-lab")}
    vision, nlp = (ledger.statement(a, NOV) for a in ("vision-lab", "nlp-lab"))
    assert vision is not None and nlp is not None
    assert (vision.members, nlp.members) == ([("bob", Decimal(3))], [("bob", Decimal(12))])
    assert (vision.charges, vision.closing) == (Decimal(3), Decimal(497))
    assert (nlp.charges, nlp.closing) == (Decimal(12), Decimal(88))
    with pytest.raises(LedgerError, match="cannot change the past"):
        ledger.set_membership("bob", "vision-lab", "admin", noon)


def test_a_member_added_mid_window_is_charged_to_the_group_for_that_window(
        ledger: Ledger) -> None:
    """The engine syncs the config's members when it starts, in the middle of its first
    window: that window is the group's, and no account of the member's own is opened."""
    ledger.sync_accounts([lab({"alice"})], NOV - 30, "config")
    bill(ledger, NOV, [line("alice", "1.000000")])  # the window began at NOV - 60
    ledger.set_membership("bob", "vision-lab", "admin", NOV + 20)  # bob, never seen before
    bill(ledger, NOV + 60, [line("bob", "2.000000")])
    assert ledger.balances() == {"vision-lab": Decimal(497)}
    assert {r for r in sql(ledger).execute("SELECT DISTINCT account FROM usage_lines")} == {
        ("vision-lab",)}
    statement = ledger.statement("vision-lab", NOV)
    assert statement is not None and dict(statement.members) == {
        "alice": Decimal(1), "bob": Decimal(2)}
    # Someone with an account of their own who joins mid-window pays that window themselves.
    ledger.open_account("carol", Decimal(10), NOV + 61, "admin")
    ledger.set_membership("carol", "vision-lab", "admin", NOV + 90)
    bill(ledger, NOV + 120, [line("carol", "1.000000")])
    assert ledger.balance("carol") == Decimal(9)


def test_an_account_opened_and_funded_before_any_usage_is_used(ledger: Ledger) -> None:
    ledger.open_account("dave", Decimal(0), NOV - 3600, "finance (cli)")
    ledger.post("dave", "recharge", Decimal(250), NOV - 3000, "r1", "grant 9",
                actor="finance (cli)")
    bill(ledger, NOV, [line("dave", "0.5")])
    assert ledger.balances() == {"dave": Decimal("249.5")}  # no opening balance on top
    kinds = [k for (k,) in sql(ledger).execute(
        "SELECT kind FROM transactions WHERE account = 'dave' ORDER BY id")]
    assert kinds == ["opening", "recharge", "charge"]
    [recharge] = [e for e in ledger.audit_entries(0) if e.action == "recharge"]
    assert (recharge.actor, recharge.target, recharge.detail) == (
        "finance (cli)", "dave", "+250 grant 9")


def test_unknown_users_refused_go_to_the_unassigned_account_and_are_flagged(
        tmp_path: Path) -> None:
    settings = BillingSettings(ledger=tmp_path / "ledger.sqlite3", unknown_users="refuse")
    ledger = Ledger(settings.ledger)
    ledger.open_account("alice", Decimal(10), NOV - 60)
    bill(ledger, NOV, [line("alice", "1"), line("mallory", "2")], "refuse")
    bill(ledger, NOV + 60, [line("mallory", "2")], "refuse")
    assert ledger.balances() == {"alice": Decimal(9), UNASSIGNED: Decimal(-4)}
    assert ledger.charged_to(NOV + 60)["mallory"] == UNASSIGNED
    registry = build_registry(settings, None, ledger)
    assert registry.get_sample_value("gpuacct_unassigned_user", {"user": "mallory"}) == 1
    assert registry.get_sample_value("gpuacct_unassigned_user", {"user": "alice"}) is None
    assert account_tier(settings, UNASSIGNED, Decimal(-4)) == "exhausted"
    # An administrator opens mallory's own account: from then on she is charged to it.
    ledger.open_account("mallory", Decimal(20), NOV + 60, "admin")
    bill(ledger, NOV + 120, [line("mallory", "2")], "refuse")
    assert ledger.balances()["mallory"] == Decimal(18)


def test_unknown_users_may_join_a_named_account(ledger: Ledger) -> None:
    ledger.sync_accounts([AccountPlan("guests", "it", None, {}, Decimal(50))], NOV - 60, "cfg")
    bill(ledger, NOV, [line("erin", "1")], "account:guests")
    assert ledger.balances() == {"guests": Decimal(49)}
    assert ledger.members("guests", NOV) == ["erin"]


def test_a_closed_account_takes_no_usage_and_no_money(ledger: Ledger) -> None:
    bill(ledger, NOV, [line("frank", "1")])
    ledger.set_status("frank", "closed", "admin", NOV + 1, "left the lab")
    with pytest.raises(LedgerError, match="is closed"):
        ledger.post("frank", "recharge", Decimal(5), NOV + 2, "r", "")
    bill(ledger, NOV + 60, [line("frank", "1")])
    assert ledger.balances() == {"frank": Decimal(99), UNASSIGNED: Decimal(-1)}
    assert [(e.action, e.target, e.actor) for e in ledger.audit_entries(0)][:4] == [
        ("membership", "frank", "gpuacct-billing (unknown_users)"),
        ("account.open", UNASSIGNED, "gpuacct-billing"), ("account.closed", "frank", "admin"),
        ("account.open", "frank", "gpuacct-billing")]


def test_a_statement_equals_the_ledger_to_the_micro_unit(ledger: Ledger) -> None:
    formula = '=HYPERLINK("http://x")'  # a user name is what people write, too
    ledger.sync_accounts([lab({"alice", "bob", "carol", formula})], NOV - 7200, "config")
    bill(ledger, NOV - 60, [line("alice", "0.000001")])  # October's
    for day in range(3):
        for minute in range(4):
            end = NOV + day * 86400 + (minute + 1) * 60
            bill(ledger, end, [line("alice", "0.333333"), line("bob", "0.000007"),
                               line(formula, "0.1")])
    ledger.post("vision-lab", "recharge", Decimal("100.25"), NOV + 4000, "r1", "grant 42",
                actor="finance (web)")
    ledger.post("vision-lab", "adjustment", Decimal("-0.01"), NOV + 5000, "a1", "rounding",
                actor="admin (cli)")
    statement = ledger.statement("vision-lab", NOV)
    assert statement is not None
    assert statement.opening == Decimal("499.999999")
    assert statement.closing == ledger.balance("vision-lab")
    month = Decimal(sum(Decimal(a) for (a,) in sql(ledger).execute(
        "SELECT amount FROM transactions WHERE account = 'vision-lab' AND "
        "COALESCE(window_end, at) >= $1", (NOV,))))
    assert statement.closing - statement.opening == month
    assert statement.charges == sum((c for _, c in statement.members), Decimal(0))
    assert dict(statement.members)["alice"] == Decimal("3.999996")
    assert [e.kind for e in statement.entries] == ["charges", "recharge", "adjustment",
                                                   "charges", "charges"]
    rows = list(csv.reader(io.StringIO(as_csv(statement))))
    assert rows[0] == ["section", "date", "kind", "amount", "reason", "actor"]
    assert ["closing", "2026-11-30", "", str(statement.closing), "", ""] in rows
    assert ["member", "", "'=HYPERLINK(\"http://x\")", "1.2", "usage charged to vision-lab",
            ""] in rows
    html = as_html(statement, NOV + 86400 * 3)
    assert "&#34;http://x&#34;" in html or "&quot;http://x&quot;" in html
    assert "<a" not in html and str(statement.closing) in html
    pdf = as_pdf(statement, NOV + 86400 * 3)
    assert pdf.startswith(b"%PDF")
    page = pypdfium2.PdfDocument(pdf)[0]
    assert "Closing balance" in page.get_textpage().get_text_bounded()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.render(scale=1.5).to_pil().save(SCREENSHOTS / "statement-pdf.png")


def test_every_amount_of_a_statement_has_six_decimals(ledger: Ledger) -> None:
    """An account opened within the month at 1 shows its opening posting as 1.000000, like
    every other amount."""
    ledger.open_account("ivy", Decimal(1), NOV + 60, "admin")
    ledger.post("ivy", "recharge", Decimal("2.5"), NOV + 120, "r1", "grant", actor="admin")
    bill(ledger, NOV + 180, [line("ivy", "0.25")])
    statement = ledger.statement("ivy", NOV)
    assert statement is not None
    amounts = [str(e.amount) for e in statement.entries]
    assert {e.kind: str(e.amount) for e in statement.entries} == {
        "opening": "1.000000", "recharge": "2.500000", "charges": "-0.250000"}
    rows = list(csv.reader(io.StringIO(as_csv(statement))))
    assert [r[3] for r in rows if r[0] == "posting"] == amounts
    assert str(statement.opening) == "0.000000" and str(statement.closing) == "3.250000"


def test_member_limits_and_plans_from_the_config(tmp_path: Path) -> None:
    settings = BillingSettings(ledger=tmp_path / "l.sqlite3", accounts={
        "vision-lab": {"members": ["alice", "bob"], "member_monthly_limits": {"bob": "50"}}})
    [plan] = AccountPlans(settings)()
    assert plan == AccountPlan("vision-lab", "", frozenset({"alice", "bob"}),
                               {"bob": Decimal(50)}, Decimal(0))
    ledger = Ledger(settings.ledger)
    ledger.sync_accounts([plan], NOV, "config")
    bill(ledger, NOV + 60, [line("bob", "20")])
    [bob] = ledger.member_months(month_start(NOV + 60), "vision-lab")  # alice: no limit, no use
    assert (bob.user, bob.cost, bob.limit) == ("bob", Decimal(20), Decimal(50))
    # bob leaves the config's list: back to his own account (none: unknown_users opens one).
    ledger.sync_accounts([AccountPlan("vision-lab", "", frozenset({"alice"}), {}, Decimal(0))],
                         NOV + 60, "config")
    assert ledger.charged_to(NOV + 60).get("bob") is None
    assert ledger.member_months(month_start(NOV), "vision-lab")[0].limit is None


@pytest.mark.parametrize(("accounts", "unknown", "problem"), [
    ({"a": {"members": ["bob"]}, "b": {"members": ["bob"]}}, "open",
     "bob is a member of both a and b"),
    ({"a": {"members": ["bob"], "member_monthly_limits": {"bob": "lots"}}}, "open",
     "member_monthly_limits.bob: 'lots' is not valid"),
    ({"a": {"members": ["bob"], "member_monthly_limits": {"eve": "5"}}}, "open",
     "eve is not a member"),
    ({"a": {"members": ["bob"], "unix_group": "lab"}}, "open", "not both"),
    ({}, "account:nowhere", "names no account"),
    ({"g": {"members": ["bob"]}}, "account:g", "whose members the config sets"),
    ({}, "maybe", "expected open, refuse or account:<name>"),
    ({"unassigned": {}}, "open", "the ledger's own account"),
])
def test_bad_account_config_is_refused_with_its_reason(accounts: dict[str, object],
                                                      unknown: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        settings_from_mapping({"billing": {"accounts": accounts, "unknown_users": unknown}})


def test_months_are_parsed_or_refused() -> None:
    assert parse_month("2026-11") == NOV
    for bad in ("2026-13", "11/2026", "2026-1", "soon"):
        with pytest.raises(ValueError, match="is not a month like 2026-11"):
            parse_month(bad)


def test_a_new_user_on_one_gpu_is_not_warned_in_their_first_hour() -> None:
    """The defaults: opening 100, warning below 25; an A100 for an hour costs 30."""
    settings = BillingSettings()
    hour = 60 * settings.prices[0].gpu[0].per_minute
    assert settings.prices[0].gpu[0].pattern == "A100" and hour == 30
    assert account_tier(settings, "newcomer", settings.opening_balance - hour) == "ok"
    assert account_tier(settings, "newcomer", settings.opening_balance - 3 * hour) == "warning"
