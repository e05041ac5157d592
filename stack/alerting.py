"""The rule files and the Alertmanager config shipped in rules/, made ready for a deployment."""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from rules import RULES_DIR

__all__ = ["RULES_DIR", "compress_time", "render_alertmanager", "rule_files", "secret_file"]



def rule_files(rules_dir: Path = RULES_DIR) -> list[Path]:
    return sorted(rules_dir.glob("*.rules.yml"))


def secret_file(path: Path) -> Path:
    """A random shared secret (webhook token, node key) in a file: made once, kept 0600."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(32) + "\n", encoding="utf-8")
    return path


def render_alertmanager(template: Path, enforcer_url: str, token_file: Path,
                        env: Mapping[str, str], ca_file: Path | None = None) -> dict[str, Any]:
    """rules/alertmanager.yml with the enforcer's address and token file (and the CA its
    certificate is verified against, for an https:// enforcer), and the operators' e-mail
    from GPUACCT_* variables (without GPUACCT_SMTP_SMARTHOST: no e-mail at all)."""
    config: dict[str, Any] = yaml.safe_load(template.read_text(encoding="utf-8"))
    for receiver in config["receivers"]:
        if receiver["name"] == "enforcer":
            hook = receiver["webhook_configs"][0]
            hook["url"] = enforcer_url
            hook["http_config"]["authorization"]["credentials_file"] = str(token_file)
            if ca_file is not None:
                hook["http_config"]["tls_config"] = {"ca_file": str(ca_file)}
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


_DURATION = re.compile(r"(\d+)(ms|y|w|d|h|m|s)")
_IS_DURATION = re.compile(r"^(\d+(ms|y|w|d|h|m|s))+$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000,
            "w": 604_800_000, "y": 31_536_000_000}
_TIMING_KEYS = {"for", "keep_firing_for", "group_wait", "group_interval", "repeat_interval"}
_RANGE = re.compile(r"\[(\w+)(?::(\w*))?\]")


def _compress(duration: str, factor: float) -> str:
    ms = sum(int(n) * _UNIT_MS[u] for n, u in _DURATION.findall(duration))
    return f"{max(1, round(ms / factor))}ms"


def _compress_range(match: re.Match[str], factor: float) -> str:
    """`[10m]` or a subquery's `[1h:1m]`; a default resolution (`[1h:]`) stays default."""
    window, step = match.group(1), match.group(2)
    if step is None:
        return f"[{_compress(window, factor)}]"
    return f"[{_compress(window, factor)}:{_compress(step, factor) if step else ''}]"


def compress_time(config: Any, factor: float) -> Any:
    """The one transformation used to run the real rules and Alertmanager config faster (tests,
    demos): every `for`, `keep_firing_for`, `group_wait`, `group_interval`, `repeat_interval`
    and every range `[10m]` inside an `expr` is divided by `factor`. Nothing else changes."""
    if isinstance(config, dict):
        out = {}
        for key, value in config.items():
            if key in _TIMING_KEYS and isinstance(value, str) and _IS_DURATION.match(value):
                out[key] = _compress(value, factor)
            elif key == "expr" and isinstance(value, str):
                out[key] = _RANGE.sub(lambda m: _compress_range(m, factor), value)
            else:
                out[key] = compress_time(value, factor)
        return out
    if isinstance(config, list):
        return [compress_time(item, factor) for item in config]
    return config
