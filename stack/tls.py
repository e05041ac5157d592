"""A certificate authority of the stack's own and a server certificate from it, for a stack
on one machine and for the tests: what an operator would otherwise get from their own CA."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Certificates:
    ca_file: Path  # what clients verify against
    cert_file: Path
    key_file: Path  # 0600

    def web_config(self, path: Path) -> Path:
        """A `--web.config.file` serving TLS with this certificate."""
        path.write_text(yaml.safe_dump({"tls_server_config": {
            "cert_file": str(self.cert_file), "key_file": str(self.key_file)}}),
            encoding="utf-8")
        return path


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def new_ca(common: str, days: int = 3650) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A CA certificate and its key, for signing server and node certificates only."""
    now = datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(_name(common)).issuer_name(_name(common))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                         crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    return cert, key


def issue(ca: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, hosts: list[str],
          days: int = 365) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A certificate for `hosts` (names or IP addresses; the first is its subject) that serves
    TLS and authenticates as a client, signed by the CA, and its new key."""
    now = datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    cert = (x509.CertificateBuilder().subject_name(_name(hosts[0])).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    return cert, key


def write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    """Made 0600 before a byte of the key is written."""
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))


def serves(cert: x509.Certificate, hosts: list[str], days: int = 30) -> bool:
    """Whether the certificate names every one of `hosts` for `days` more days."""
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    served = {str(a) for a in names.get_values_for_type(x509.IPAddress)}
    served |= set(names.get_values_for_type(x509.DNSName))
    soon = datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=days)
    return set(hosts) <= served and cert.not_valid_after_utc > soon


def make_certificates(directory: Path, hosts: list[str], days: int = 365) -> Certificates:
    """A new CA in `directory` and a certificate it signs for `hosts` (names or IP
    addresses). The CA's key is not kept: nothing else can be signed with it."""
    directory.mkdir(parents=True, exist_ok=True)
    ca, ca_key = new_ca("gpuacct throwaway CA", days)
    cert, key = issue(ca, ca_key, hosts, days)
    made = Certificates(directory / "ca.crt", directory / "server.crt", directory / "server.key")
    write_cert(made.ca_file, ca)
    write_cert(made.cert_file, cert)
    write_key(made.key_file, key)
    return made


def kept_or_made(directory: Path, hosts: list[str], days: int = 365) -> Certificates:
    """The certificates already in `directory` while they serve `hosts` for 30 more days (so
    browsers and nodes that trust the CA keep trusting it across restarts), else new ones."""
    kept = Certificates(directory / "ca.crt", directory / "server.crt", directory / "server.key")
    try:
        cert = x509.load_pem_x509_certificate(kept.cert_file.read_bytes())
        kept.key_file.stat()
        kept.ca_file.stat()
    except (OSError, ValueError):
        return make_certificates(directory, hosts, days)
    return kept if serves(cert, hosts) else make_certificates(directory, hosts, days)
