"""The rule files and the Alertmanager config: promtool and amtool, and what the tests cover."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from stack.alerting import RULES_DIR, render_alertmanager, rule_files

ROOT = Path(__file__).resolve().parents[2]
TESTS = Path(__file__).parent
EVALUATION = 60  # seconds: every promtool test file evaluates once a minute


def rules() -> list[dict[str, Any]]:
    return [rule for path in rule_files() for group in yaml.safe_load(path.read_text())["groups"]
            for rule in group["rules"]]


def alerts() -> list[dict[str, Any]]:
    return [r for r in rules() if "alert" in r]


def fixed_labels(rule: dict[str, Any]) -> dict[str, str]:
    """The rule's labels, but those a template fills in (a CPU limit's quota)."""
    return {k: v for k, v in rule["labels"].items() if "{{" not in str(v)}


def seconds(duration: str) -> int:
    units = {"s": 1, "m": 60, "h": 3600}
    return sum(int(n) * units[u] for n, u in re.findall(r"(\d+)([smh])", duration))


def test_promtool_check_rules_is_clean() -> None:
    result = subprocess.run(["promtool", "check", "rules", *map(str, rule_files())],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "WARNING" not in result.stdout + result.stderr


def test_every_rule_file_has_a_test_file() -> None:
    for path in rule_files():
        assert (TESTS / path.name.replace(".rules.yml", ".test.yml")).exists(), path.name


def test_promtool_unit_tests_pass() -> None:
    files = [str(p) for p in sorted(TESTS.glob("*.test.yml"))]
    result = subprocess.run(["promtool", "test", "rules", *files],
                            capture_output=True, text=True, cwd=TESTS)
    assert result.returncode == 0, result.stdout + result.stderr


def alert_cases() -> dict[str, list[tuple[str, int, list[dict[str, Any]]]]]:
    """alertname: (test name, eval time in seconds, expected alerts) for every case."""
    cases: dict[str, list[tuple[str, int, list[dict[str, Any]]]]] = {}
    for path in TESTS.glob("*.test.yml"):
        spec = yaml.safe_load(path.read_text())
        assert seconds(spec["evaluation_interval"]) == EVALUATION, path.name
        for test in spec["tests"]:
            for case in test.get("alert_rule_test", []):
                cases.setdefault(case["alertname"], []).append(
                    (test["name"], seconds(case["eval_time"]), case["exp_alerts"]))
    return cases


@pytest.mark.parametrize("alert", [a["alert"] for a in alerts()])
def test_every_alert_fires_stays_silent_and_has_its_boundary_tested(alert: str) -> None:
    cases = alert_cases().get(alert, [])
    firing = [(name, t) for name, t, expected in cases if expected]
    silent = {(name, t) for name, t, expected in cases if not expected}
    assert firing, f"{alert} is never tested firing"
    assert silent, f"{alert} is never tested silent"
    assert any((name, t - EVALUATION) in silent for name, t in firing), (
        f"{alert}: no case is silent one evaluation before a firing one")


@pytest.mark.parametrize("rule", alerts(), ids=lambda r: r["alert"])
def test_expected_alerts_assert_every_label_and_annotation(rule: dict[str, Any]) -> None:
    for _, _, expected in alert_cases()[rule["alert"]]:
        for alert in expected:
            assert fixed_labels(rule).items() <= alert["exp_labels"].items()
            assert rule["labels"].keys() <= alert["exp_labels"].keys()
            assert set(alert["exp_annotations"]) == set(rule["annotations"]) == {
                "summary", "description", "runbook_url"}


def anchors(markdown: str) -> set[str]:
    return {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-")
            for h in re.findall(r"^#+ (.+)$", markdown, re.M)}


def test_every_runbook_url_points_into_the_runbook() -> None:
    runbook = anchors((ROOT / "docs" / "runbook.md").read_text())
    for rule in alerts():
        url = rule["annotations"]["runbook_url"]
        page, _, anchor = url.partition("#")
        assert page == "docs/runbook.md", url
        assert anchor in runbook, f"{rule['alert']}: no section #{anchor} in docs/runbook.md"


def test_every_recording_rule_is_used() -> None:
    """By an alert (its expression or annotations), a dashboard, the web page or the CLI;
    being used only by another recording rule does not count."""
    used_in = [f"{a['expr']} {a['annotations']}" for a in alerts()]
    for folder in ("grafana", "web", "billing_engine", "enforcer"):
        used_in += [p.read_text(errors="replace") for p in (ROOT / folder).rglob("*")
                    if p.is_file() and p.suffix in (".json", ".py", ".html", ".yml")]
    for rule in (r for r in rules() if "record" in r):
        assert any(rule["record"] in text for text in used_in), (
            f"recording rule {rule['record']} is used by nothing")


def amtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["amtool", *args], capture_output=True, text=True)


@pytest.fixture
def rendered(tmp_path: Path) -> Path:
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    config = render_alertmanager(RULES_DIR / "alertmanager.yml", "http://10.0.0.5:9837/v1/alerts",
                                 token, {"GPUACCT_SMTP_SMARTHOST": "mail.lab.example:587",
                                         "GPUACCT_ALERT_EMAIL_TO": "gpu-ops@lab.example"})
    path = tmp_path / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_amtool_check_config_is_clean(rendered: Path, tmp_path: Path) -> None:
    for path in (RULES_DIR / "alertmanager.yml", rendered):
        result = amtool("check-config", str(path))
        assert result.returncode == 0 and "SUCCESS" in result.stdout, result.stdout + result.stderr
    no_mail = render_alertmanager(RULES_DIR / "alertmanager.yml", "http://x:1/v1/alerts",
                                  tmp_path / "token", {})
    assert [r for r in no_mail["receivers"] if r["name"] == "operators"] == [{"name": "operators"}]
    enforcer = yaml.safe_load(rendered.read_text())["receivers"][0]["webhook_configs"][0]
    assert enforcer["url"] == "http://10.0.0.5:9837/v1/alerts"
    assert enforcer["send_resolved"] is True


@pytest.mark.parametrize("rule", alerts(), ids=lambda r: r["alert"])
def test_each_alert_reaches_its_receiver(rendered: Path, rule: dict[str, Any]) -> None:
    """Enforcement alerts (with an action) reach the enforcer; the rest the operators."""
    receiver = "enforcer" if "action" in rule["labels"] else "operators"
    labels = [f"alertname={rule['alert']}", "user=alice", "instance=node1:9835",
              *(f"{k}={v}" for k, v in fixed_labels(rule).items())]
    result = amtool("config", "routes", "test", f"--config.file={rendered}",
                    f"--verify.receivers={receiver}", *labels)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == receiver


def test_enforcement_alerts_are_grouped_per_alert_and_user_and_repeat_in_minutes() -> None:
    route = yaml.safe_load((RULES_DIR / "alertmanager.yml").read_text())["route"]["routes"][0]
    assert route["receiver"] == "enforcer"
    assert route["group_by"] == ["alertname", "user"]
    assert seconds(route["group_wait"]) <= 10
    assert 60 <= seconds(route["repeat_interval"]) <= 15 * 60
