"""`--web.config.file`: the exporter-toolkit web configuration that Prometheus, Alertmanager and
node_exporter read, read the same way by every gpuacct service: TLS for the listener (a
certificate and key, optionally client certificates checked against a CA) and
`basic_auth_users` with bcrypt hashes, asked of whoever reads `/metrics`.

The other routes keep their own authentication (signed node requests, the webhook's bearer
token, the web's login), so basic auth guards only what Prometheus scrapes."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ssl
import threading
from pathlib import Path
from typing import Annotated, Literal

import bcrypt
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gpuacct.config import describe_error

_VERSIONS = {"TLS10": ssl.TLSVersion.TLSv1, "TLS11": ssl.TLSVersion.TLSv1_1,
             "TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
# exporter-toolkit's client_auth_type, as Go's crypto/tls names them.
_CLIENT_AUTH = {"NoClientCert": ssl.CERT_NONE, "RequestClientCert": ssl.CERT_OPTIONAL,
                "RequireAnyClientCert": ssl.CERT_REQUIRED,
                "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
                "RequireAndVerifyClientCert": ssl.CERT_REQUIRED}


class WebConfigError(Exception):
    """A web config file that cannot be used; the message names the file and the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


TlsVersion = Literal["TLS10", "TLS11", "TLS12", "TLS13"]


class TlsServerConfig(_Strict):
    cert_file: Path
    key_file: Path
    client_auth_type: Literal["NoClientCert", "RequestClientCert", "RequireAnyClientCert",
                              "VerifyClientCertIfGiven", "RequireAndVerifyClientCert"
                              ] = "NoClientCert"
    client_ca_file: Path | None = None
    min_version: TlsVersion = "TLS12"
    max_version: TlsVersion = "TLS13"


class WebConfig(_Strict):
    tls_server_config: TlsServerConfig | None = None
    # user name -> bcrypt hash (`htpasswd -nBC 10 USER`, or Python's bcrypt.hashpw)
    basic_auth_users: dict[Annotated[str, Field(min_length=1)], str] = {}
    http_server_config: dict[str, object] = {}  # headers, http2: Go's; accepted, not used


def uvicorn_options(config: WebConfig) -> dict[str, object]:
    """The same TLS for a uvicorn listener (the enforcer, the web); its minimum version is
    Python's default (TLS 1.2)."""
    tls = config.tls_server_config
    if tls is None:
        return {}
    return {"ssl_certfile": str(tls.cert_file), "ssl_keyfile": str(tls.key_file),
            "ssl_ca_certs": str(tls.client_ca_file) if tls.client_ca_file else None,
            "ssl_cert_reqs": _CLIENT_AUTH[tls.client_auth_type]}


def load_web_config(path: Path) -> WebConfig:
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise WebConfigError(f"{path}: cannot read the web config: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise WebConfigError(f"{path}: not valid YAML: {exc}") from None
    try:
        config = WebConfig.model_validate(raw)
    except ValidationError as exc:
        raise WebConfigError(f"{path}: " + "; ".join(
            describe_error(e) for e in exc.errors(include_url=False))) from None
    for user, hashed in config.basic_auth_users.items():
        if not hashed.startswith(("$2a$", "$2b$", "$2y$")):
            raise WebConfigError(f"{path}: basic_auth_users.{user}: not a bcrypt hash "
                                 "(make one with `htpasswd -nBC 10 USER`)")
    ssl_context(config, path)  # certificate, key and CA are read now: a bad one fails start-up
    return config


def ssl_context(config: WebConfig, path: Path | None = None) -> ssl.SSLContext | None:
    tls = config.tls_server_config
    if tls is None:
        return None
    where = f"{path}: " if path else ""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = _VERSIONS[tls.min_version]
    context.maximum_version = _VERSIONS[tls.max_version]
    try:
        context.load_cert_chain(tls.cert_file, tls.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise WebConfigError(f"{where}tls_server_config: cannot use the certificate "
                             f"{tls.cert_file} with the key {tls.key_file}: {exc}") from None
    context.verify_mode = _CLIENT_AUTH[tls.client_auth_type]
    if tls.client_auth_type in ("VerifyClientCertIfGiven", "RequireAndVerifyClientCert"):
        if tls.client_ca_file is None:
            raise WebConfigError(f"{where}tls_server_config.client_ca_file: needed for "
                                 f"client_auth_type {tls.client_auth_type}")
        try:
            context.load_verify_locations(tls.client_ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise WebConfigError(f"{where}tls_server_config.client_ca_file: cannot read "
                                 f"{tls.client_ca_file}: {exc}") from None
    return context


class BasicAuth:
    """Checks `Authorization: Basic ...` against basic_auth_users. bcrypt is slow on purpose,
    so a pair once found good is remembered (by its digest) as exporter-toolkit does; a
    scrape every few seconds then costs one hash, not one bcrypt."""

    def __init__(self, users: dict[str, str]) -> None:
        self.users = users
        self._good: set[bytes] = set()
        self._lock = threading.Lock()

    def allows(self, header: str | None) -> bool:
        if not self.users:
            return True
        scheme, _, encoded = (header or "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            user, sep, password = base64.b64decode(encoded, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        hashed = self.users.get(user)
        if not sep or hashed is None:
            return False
        digest = hashlib.sha256(b"\0".join([user.encode(), password.encode(),
                                            hashed.encode()])).digest()
        with self._lock:
            if any(hmac.compare_digest(digest, good) for good in self._good):
                return True
        if not bcrypt.checkpw(password.encode(), hashed.encode()):
            return False
        with self._lock:
            self._good.add(digest)
        return True
