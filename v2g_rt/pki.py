"""The site's small PKI for OCPP Security Profile 3: a site CA, the controller's server
certificate and one client certificate per charging station (`v2g-rt pki init`).

Keys are EC P-256: OCPP 2.0.1's TLS cipher suites for Security Profile 3 include
ECDHE-ECDSA over P-256, and it signs fast on a small ARM board. Files are written with O_EXCL, so an existing PKI is
never overwritten, not even by two runs racing each other.
"""
from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from pathlib import Path

from .errors import V2GError

STATION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,47}")   # OCPP identity: 48 chars, one URL path segment
DEFAULT_SERVER_NAMES = ("localhost", "127.0.0.1")
CA_DAYS = 3650
LEAF_DAYS = 825          # the longest TLS leaf validity clients still accept
EXPIRY_WARNING_DAYS = 30


def _key():
    from cryptography.hazmat.primitives.asymmetric import ec
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str, org: str):
    from cryptography.x509 import Name, NameAttribute
    from cryptography.x509.oid import NameOID
    return Name([NameAttribute(NameOID.ORGANIZATION_NAME, org), NameAttribute(NameOID.COMMON_NAME, common_name)])


def _san(names):
    from cryptography import x509
    out = []
    for n in names:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            out.append(x509.DNSName(n))
    return x509.SubjectAlternativeName(out)


def _certificate(subject, key, issuer, issuer_key, days: int, *, ca: bool = False, usage=None, san=None):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    now = dt.datetime.now(dt.timezone.utc)
    b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(key.public_key())
         .serial_number(x509.random_serial_number())
         .not_valid_before(now - dt.timedelta(minutes=5))        # stations whose clock runs a little behind
         .not_valid_after(now + dt.timedelta(days=days))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
         .add_extension(x509.KeyUsage(digital_signature=not ca, content_commitment=False, key_encipherment=False,
                                      data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
                                      encipher_only=False, decipher_only=False), critical=True)
         .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False))
    if not ca:
        b = b.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), critical=False)
    if usage is not None:
        b = b.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if san is not None:
        b = b.add_extension(san, critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def _pem(cert) -> bytes:
    from cryptography.hazmat.primitives.serialization import Encoding
    return cert.public_bytes(Encoding.PEM)


def _key_pem(key) -> bytes:
    from cryptography.hazmat.primitives import serialization as s
    return key.private_bytes(s.Encoding.PEM, s.PrivateFormat.PKCS8, s.NoEncryption())


def _write(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _private_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)        # mkdir's mode is cut by the umask, and an existing directory keeps its own


def init(directory, stations, server_names=(), org: str = "v2g-rt site") -> list[Path]:
    """Create the site CA, the controller's and every station's certificate and key in
    directory; the files written. Refuses (ERR_PKI_EXISTS) before writing anything if one exists."""
    root = Path(directory)
    stations = list(dict.fromkeys(stations))
    bad = [s for s in stations if not STATION_ID.fullmatch(s)]
    if not stations or bad:
        raise V2GError("ERR_PKI_STATION_ID", f"station ids must be 1 to 48 letters, digits, '.', '_' or '-' "
                                             f"starting with a letter or digit; found {bad or 'none'}")
    names = list(dict.fromkeys(server_names or DEFAULT_SERVER_NAMES))
    plan = {root / "ca.pem": 0o644, root / "ca.key": 0o600, root / "controller.pem": 0o644,
            root / "controller.key": 0o600}
    for s in stations:
        plan[root / "stations" / f"{s}.pem"] = 0o644
        plan[root / "stations" / f"{s}.key"] = 0o600
    existing = [str(p) for p in plan if p.exists()]
    if existing:
        raise V2GError("ERR_PKI_EXISTS", f"{', '.join(existing)} already exist{'s' if len(existing) == 1 else ''}; "
                                         f"pki init never overwrites")
    from cryptography.x509.oid import ExtendedKeyUsageOID as EKU

    _private_dir(root)
    _private_dir(root / "stations")
    ca_key = _key()
    ca_name = _name(f"{org} CA", org)
    ca = _certificate(ca_name, ca_key, ca_name, ca_key, CA_DAYS, ca=True)
    files = {root / "ca.pem": _pem(ca), root / "ca.key": _key_pem(ca_key)}
    key = _key()
    files[root / "controller.pem"] = _pem(_certificate(_name(names[0], org), key, ca_name, ca_key, LEAF_DAYS,
                                                       usage=EKU.SERVER_AUTH, san=_san(names)))
    files[root / "controller.key"] = _key_pem(key)
    for s in stations:
        key = _key()
        files[root / "stations" / f"{s}.pem"] = _pem(_certificate(_name(s, org), key, ca_name, ca_key, LEAF_DAYS,
                                                                   usage=EKU.CLIENT_AUTH))
        files[root / "stations" / f"{s}.key"] = _key_pem(key)
    for path, data in files.items():
        _write(path, data, plan[path])
    return list(files)


def not_after(path) -> dt.datetime:
    """When the (first) certificate in a PEM file expires, UTC."""
    from cryptography import x509
    return x509.load_pem_x509_certificate(Path(path).read_bytes()).not_valid_after_utc


def expiring(paths, now: dt.datetime | None = None, days: int = EXPIRY_WARNING_DAYS) -> list[tuple[str, int]]:
    """The certificates among paths that expire within `days` (or already did): (path, days left)."""
    now = now or dt.datetime.now(dt.timezone.utc)
    out = []
    for p in paths:
        left = not_after(p) - now
        if left < dt.timedelta(days=days):
            out.append((str(p), left.days))
    return out
