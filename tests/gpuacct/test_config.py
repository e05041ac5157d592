from __future__ import annotations

import re
import subprocess
import sys
import typing
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import BaseModel

from gpuacct.config import (
    VENDORS,
    ConfigError,
    InfluxV2Settings,
    NvmlSettings,
    Settings,
    load_settings,
)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gpuacct.yaml"
    path.write_text(text)
    return path


def error_of(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, text))
    return str(info.value)


def test_no_file_runs_on_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GPUACCT_CONFIG", raising=False)
    settings = load_settings()
    assert settings == Settings()
    assert settings.exporter.interval_seconds == 5.0
    assert settings.exporter.min_uid == 1000


def test_config_env_var_names_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPUACCT_CONFIG", str(write(tmp_path, "exporter:\n  min_uid: 2000\n")))
    assert load_settings().exporter.min_uid == 2000


def test_empty_file_is_defaults(tmp_path: Path) -> None:
    assert load_settings(write(tmp_path, "")) == Settings()


def test_wrong_type_names_key_value_and_expectation(tmp_path: Path) -> None:
    message = error_of(tmp_path, "exporter:\n  interval_seconds: often\n")
    assert message.count("\n") == 0
    assert "exporter.interval_seconds" in message
    assert "'often'" in message
    assert "valid number" in message


def test_unknown_key_is_refused(tmp_path: Path) -> None:
    message = error_of(tmp_path, "exporter:\n  intervall_seconds: 5\n")
    assert message == f"{tmp_path}/gpuacct.yaml: exporter.intervall_seconds: unknown key"


def test_unknown_section_is_refused(tmp_path: Path) -> None:
    assert "exportr: unknown key" in error_of(tmp_path, "exportr: {}\n")


def test_missing_required_value(tmp_path: Path) -> None:
    text = "influxdb:\n  version: 2\n  url: http://x:8086\n  bucket: b\n  token: t\n"
    message = error_of(tmp_path, text)
    assert message == f"{tmp_path}/gpuacct.yaml: influxdb.org: missing, a value is required"


def test_list_items_are_named_by_index(tmp_path: Path) -> None:
    message = error_of(tmp_path, "exporter:\n  job_sources: [env, slurm]\n")
    assert "exporter.job_sources[1]: 'slurm' is not valid" in message
    assert "'env', 'container' or 'session'" in message


def test_out_of_range(tmp_path: Path) -> None:
    assert "stack.prometheus_port: 70000 is not valid" in error_of(
        tmp_path, "stack:\n  prometheus_port: 70000\n")


def test_billing_reads_one_prometheus_or_several_replicas(tmp_path: Path) -> None:
    one = load_settings(write(tmp_path, "billing:\n  prometheus_url: http://a:9090\n"))
    assert one.billing.prometheus_url == ["http://a:9090"]
    pair = load_settings(write(tmp_path, "billing:\n  prometheus_url: [http://a:9090, "
                                         "https://b:9090]\n"))
    assert pair.billing.prometheus_url == ["http://a:9090", "https://b:9090"]
    assert "billing.prometheus_url: give at least one Prometheus URL" in error_of(
        tmp_path, "billing:\n  prometheus_url: []\n")
    assert "billing.prometheus_url[1]: 'b:9090' is not valid: expected an http" in error_of(
        tmp_path, "billing:\n  prometheus_url: [http://a:9090, b:9090]\n")


def test_a_ledger_in_postgresql_is_a_url_without_its_password(tmp_path: Path) -> None:
    url = "postgresql://gpuacct@db.example:5432/gpuacct"
    settings = load_settings(write(tmp_path, f"billing:\n  ledger: {url}\n"
                                             f"enforcer:\n  database: {url}\n"))
    assert (settings.billing.ledger, settings.enforcer.database) == (url, url)
    assert load_settings(write(tmp_path, "billing:\n  ledger: /srv/l.sqlite3\n")
                         ).billing.ledger == Path("/srv/l.sqlite3")
    message = error_of(tmp_path, "billing:\n  ledger: postgresql://gpuacct:s3cret@db/gpuacct\n")
    assert "the URL holds a password: give it in PGPASSWORD or a password file" in message
    assert "s3cret" not in message.split("is not valid")[-1]


def test_bad_listen_address(tmp_path: Path) -> None:
    message = error_of(tmp_path, "exporter:\n  listen_address: localhost\n")
    assert "exporter.listen_address: 'localhost' is not valid: expected HOST:PORT" in message


def test_yaml_syntax_error_gives_line(tmp_path: Path) -> None:
    message = error_of(tmp_path, "exporter:\n  min_uid: 1000\n bad: [\n")
    assert "not valid YAML at line" in message


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    assert "expected a mapping" in error_of(tmp_path, "- a\n- b\n")


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(tmp_path / "absent.yaml")


def test_secrets_from_literal_env_and_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    key_file = tmp_path / "hmac.key"
    key_file.write_text("key-from-a-file-16\n")
    monkeypatch.setenv("GPUACCT_TEST_TOKEN", "token-from-the-env")
    settings = load_settings(write(tmp_path, (
        "auth:\n"
        f"  node_key: {{file: {key_file}}}\n"
        "  webhook_token: {env: GPUACCT_TEST_TOKEN}\n"
        "  admin_password_hash: $argon2id$literal\n")))
    auth = settings.auth
    assert auth.node_key is not None and auth.webhook_token is not None
    assert [k.get_secret_value() for k in auth.node_key] == ["key-from-a-file-16"]
    assert [t.get_secret_value() for t in auth.webhook_token] == ["token-from-the-env"]
    assert "token-from-the-env" not in repr(settings)  # secrets never show up in logs


def test_secret_from_unset_env_fails_with_key(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GPUACCT_NOT_SET", raising=False)
    message = error_of(tmp_path, "auth:\n  webhook_token: {env: GPUACCT_NOT_SET}\n")
    assert "auth.webhook_token" in message
    assert "GPUACCT_NOT_SET is not set" in message


def test_rotating_secrets_take_one_or_two_and_the_shared_node_key_is_named(
        tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, (
        "auth:\n  node_master_key: [new-master-key-16, old-master-key-16]\n"
        "  node_key: the-only-node-key\n")))
    assert settings.auth.node_master_key is not None and settings.auth.node_key is not None
    assert [k.get_secret_value() for k in settings.auth.node_master_key] == [
        "new-master-key-16", "old-master-key-16"]
    assert [k.get_secret_value() for k in settings.auth.node_key] == ["the-only-node-key"]
    message = error_of(tmp_path, "auth:\n  node_master_key: [" + ", ".join(
        [f"master-key-number-{i}" for i in range(3)]) + "]\n")
    assert "auth.node_master_key" in message and "at most 2" in message
    message = error_of(tmp_path, "auth:\n  node_hmac_key: s3cret-value\n")
    assert "auth.node_master_key" in message and "auth.node_key" in message
    assert "node-key NAME" in message and "s3cret-value" not in message


def _keys(model: type[BaseModel], prefix: str = "") -> Iterator[str]:
    """Every key path of a settings model, nested sections and list items included."""
    for name, field in model.model_fields.items():
        if field.alias == "@devices":  # each device vendor's section, by its name
            for vendor, entry in VENDORS.items():
                yield f"{prefix}{vendor}"
                yield from _keys(entry.settings, f"{prefix}{vendor}.")
            continue
        yield f"{prefix}{name}"
        for kind in (field.annotation, *typing.get_args(field.annotation)):
            for inner in (kind, *typing.get_args(kind)):
                if isinstance(inner, type) and issubclass(inner, BaseModel):
                    yield from _keys(inner, f"{prefix}{name}.")


def test_example_config_is_valid_and_documents_every_key() -> None:
    example = Path(__file__).parents[2] / "gpuacct.example.yaml"
    settings = load_settings(example)
    assert settings.exporter.interval_seconds == 5.0
    text = example.read_text()
    keys = list(_keys(Settings)) + [f"influxdb.{k}" for k in InfluxV2Settings.model_fields]
    assert "billing.prices.gpu.pattern" in keys and "exporter.actuator.kill_grace_seconds" in keys
    for key in keys:
        name = key.rsplit(".", 1)[-1]  # as a block key, a commented one, or in a flow mapping
        assert re.search(rf"(^\s*(- )?#? ?|[{{,] ?){name}:", text, re.M), (
            f"{key} undocumented in gpuacct.example.yaml")


CHOICE = re.compile(r"^(\s*)(\w+): (\S+)(\s+# )(.*\|.*)$")


def _choices() -> list[tuple[str, str, str]]:
    """(key, choice, the example with that choice written in) for every key whose comment
    lists its choices as `a (what a does) | b | "off"`: as listed, and without quotes."""
    example = (Path(__file__).parents[2] / "gpuacct.example.yaml").read_text().splitlines()
    found = []
    for n, line in enumerate(example):
        match = CHOICE.match(line)
        if match is None or line.lstrip().startswith("#"):
            continue
        indent, key, _, gap, comment = match.groups()
        parent = next(m[1] for above in reversed(example[:n])
                      if (m := re.match(rf"^{indent[:-2]}(\w+):", above)))
        for choice in comment.split("|"):
            listed = choice.split()[0]
            for written in dict.fromkeys((listed, listed.strip('"'))):
                changed = [*example[:n], f"{indent}{key}: {written}{gap}{comment}",
                           *example[n + 1:]]
                found.append((f"{parent}.{key}", written, "\n".join(changed)))
    return found


@pytest.mark.parametrize("key, choice, text", _choices(),
                         ids=[f"{k}={c}" for k, c, _ in _choices()])
def test_every_commented_choice_of_the_example_loads(tmp_path: Path, key: str, choice: str,
                                                     text: str) -> None:
    """Bare `off` is a YAML boolean; a key that takes "off" takes it too."""
    settings = load_settings(write(tmp_path, text))
    values = {"exporter.gpu_share": settings.exporter.gpu_share,
              "nvml.backend": settings.exporter.device("nvml", NvmlSettings).backend,
              "actuator.cpu_limiter": settings.exporter.actuator.cpu_limiter,
              "actuator.device_gating": settings.exporter.actuator.device_gating,
              "allocator.mode": settings.allocator.mode,
              "idle.action": settings.exporter.idle.action if settings.exporter.idle else None,
              "unattributed.action": settings.exporter.unattributed.action}
    assert values[key] == choice.strip('"')


def test_the_example_lists_the_off_choices_quoted_and_they_load_bare_too() -> None:
    choices = {(k, c) for k, c, _ in _choices()}
    assert choices >= {("nvml.backend", '"off"'), ("nvml.backend", "off"),
                       ("actuator.cpu_limiter", '"off"'), ("actuator.cpu_limiter", "off"),
                       ("unattributed.action", "stop")}


@pytest.mark.parametrize("text, key", [
    ("exporter:\n  min_uid: -1\n", "exporter.min_uid"),
    ("exporter:\n  bogus: 1\n", "exporter.bogus"),
    ("influxdb:\n  version: 2\n", "influxdb.url"),
])
def test_service_refuses_bad_config_in_one_line(tmp_path: Path, text: str, key: str) -> None:
    """Start-up fails with exit 2, a line per problem naming the key, and no traceback."""
    result = subprocess.run(
        [sys.executable, "-m", "exporter", "--config", str(write(tmp_path, text))],
        capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert key in result.stderr.splitlines()[0]
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("gpuacct: config error: ")


def test_a_client_ca_that_cannot_be_used_is_named_and_a_certificate_needs_its_key(
        tmp_path: Path) -> None:
    config = write(tmp_path, "tls_client_config:\n  ca_file: /nonexistent/ca.crt\n")
    done = subprocess.run([sys.executable, "-m", "billing_engine", "--config", str(config),
                           "run"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "tls_client_config: cannot use /nonexistent/ca.crt" in done.stderr
    assert "Traceback" not in done.stderr
    message = error_of(tmp_path, "tls_client_config:\n  cert_file: /etc/client.crt\n")
    assert "tls_client_config" in message and "cert_file and key_file go together" in message
