"""TLS material and client authentication between the Flower server and the sites.

* :func:`write_credentials`: a throwaway CA, a server certificate signed by it (names and IP addresses
  as subject alternative names) and one random token per site. The server keeps ``server.key``,
  ``server.pem``, ``ca.pem`` and ``tokens.json``; each site gets ``ca.pem`` and its own ``<site>.token``.
  ``ca.key`` signs nothing else and may be deleted.
* :func:`token_response` / :func:`check_response`: challenge-response. The server sends a random nonce,
  the client answers ``HMAC-SHA256(token, site:nonce)``; the token itself never crosses the wire.
"""

from __future__ import annotations

import datetime
import hmac
import ipaddress
import json
import os
import secrets
from collections.abc import Iterable, Mapping
from hashlib import sha256
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from lungseg.atomic import write_text_atomic
from lungseg.federated.sites import check_site_id

__all__ = ["check_response", "load_tokens", "new_challenge", "read_token", "token_response", "write_credentials"]

TOKENS_NAME = "tokens.json"


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "lungseg federated"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _write_private(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    os.chmod(path, 0o600)


def write_credentials(out_dir: str | Path, sites: Iterable[str], hosts: Iterable[str] = ("localhost", "127.0.0.1"),
                      days: int = 30) -> dict[str, Path]:
    """Write ``ca.pem``, ``ca.key``, ``server.pem``, ``server.key``, ``tokens.json`` and ``<site>.token`` into
    ``out_dir``; returns name -> path. ``hosts``: the names / IP addresses clients use to reach the server."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sites = [check_site_id(s) for s in sites]
    if len(set(sites)) != len(sites) or not sites:
        raise ValueError(f"sites must be distinct and at least one, got {sites}")
    now = datetime.datetime.now(datetime.timezone.utc)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (x509.CertificateBuilder().subject_name(_name("lungseg federated CA")).issuer_name(_name("lungseg federated CA"))
               .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(start).not_valid_after(end)
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .sign(ca_key, hashes.SHA256()))
    server_key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    hosts = list(hosts)
    server_cert = (x509.CertificateBuilder().subject_name(_name(hosts[0] if hosts else "localhost"))
                   .issuer_name(ca_cert.subject).public_key(server_key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
                   .add_extension(x509.SubjectAlternativeName(names), critical=False)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .sign(ca_key, hashes.SHA256()))
    paths = {name: out / name for name in ("ca.pem", "ca.key", "server.pem", "server.key", TOKENS_NAME)}
    paths["ca.pem"].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    _write_private(paths["ca.key"], _pem_key(ca_key))
    paths["server.pem"].write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    _write_private(paths["server.key"], _pem_key(server_key))
    tokens = {site: secrets.token_hex(32) for site in sites}
    write_text_atomic(paths[TOKENS_NAME], json.dumps(tokens, indent=2, sort_keys=True) + "\n")
    os.chmod(paths[TOKENS_NAME], 0o600)
    for site, token in tokens.items():
        paths[f"{site}.token"] = out / f"{site}.token"
        _write_private(paths[f"{site}.token"], (token + "\n").encode())
    return paths


def load_tokens(path: str | Path) -> dict[str, str]:
    """site -> token from the server's ``tokens.json``."""
    tokens = json.loads(Path(path).read_text())
    if not isinstance(tokens, dict) or not tokens:
        raise ValueError(f"{path}: expected a JSON object site -> token (written by lungseg fl-certificates)")
    return {check_site_id(site): str(token) for site, token in tokens.items()}


def read_token(path: str | Path) -> str:
    """A site's token file (one line)."""
    token = Path(path).read_text().strip()
    if len(token) < 32:
        raise ValueError(f"{path}: not a site token (written by lungseg fl-certificates)")
    return token


def new_challenge() -> str:
    """A fresh random nonce for one joining client."""
    return secrets.token_hex(16)


def token_response(token: str, site: str, challenge: str) -> str:
    """The client's answer to ``challenge``: HMAC-SHA256 of ``site:challenge`` under the site's token."""
    return hmac.new(token.encode(), f"{site}:{challenge}".encode(), sha256).hexdigest()


def check_response(tokens: Mapping[str, str], site: str, challenge: str, response: str) -> bool:
    """Whether ``response`` proves knowledge of ``site``'s token (constant-time comparison)."""
    token = tokens.get(site)
    return token is not None and hmac.compare_digest(token_response(token, site, challenge), str(response))
