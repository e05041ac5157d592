"""The rule files and the Alertmanager config shipped in rules/, made ready for a deployment."""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

RULES_DIR = Path(__file__).resolve().parents[1] / "rules"


def rule_files(rules_dir: Path = RULES_DIR) -> list[Path]:
    return sorted(rules_dir.glob("*.rules.yml"))


def webhook_token_file(path: Path) -> Path:
    """The bearer token Alertmanager presents to the enforcer: made once, kept 0600."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(32) + "\n", encoding="utf-8")
    return path


def render_alertmanager(template: Path, enforcer_url: str, token_file: Path,
                        env: Mapping[str, str]) -> dict[str, Any]:
    """rules/alertmanager.yml with the enforcer's address and token file, and the operators'
    e-mail from GPUACCT_* variables (without GPUACCT_SMTP_SMARTHOST: no e-mail at all)."""
    config: dict[str, Any] = yaml.safe_load(template.read_text(encoding="utf-8"))
    for receiver in config["receivers"]:
        if receiver["name"] == "enforcer":
            hook = receiver["webhook_configs"][0]
            hook["url"] = enforcer_url
            hook["http_config"]["authorization"]["credentials_file"] = str(token_file)
        elif receiver["name"] == "operators":
            if not env.get("GPUACCT_SMTP_SMARTHOST"):
                receiver.pop("email_configs", None)
                continue
            email = receiver["email_configs"][0]
            email["smarthost"] = env["GPUACCT_SMTP_SMARTHOST"]
            for key, var in (("to", "GPUACCT_ALERT_EMAIL_TO"), ("from", "GPUACCT_ALERT_EMAIL_FROM"),
                             ("auth_username", "GPUACCT_SMTP_USERNAME"),
                             ("auth_password", "GPUACCT_SMTP_PASSWORD")):
                if env.get(var):
                    email[key] = env[var]
    return config
