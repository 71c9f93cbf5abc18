"""`v2g-rt pki init` as an integrator uses it: files, modes, names, refusals."""
import ipaddress
import stat
import subprocess
import sys

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CLI = [sys.executable, "-P", "-m", "v2g_rt.cli"]


def v2g(*args):
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60)


def cert(path):
    return x509.load_pem_x509_certificate(path.read_bytes())


def mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def test_pki_init_writes_a_ca_the_controller_and_each_station(tmp_path):
    d = tmp_path / "pki"
    r = v2g("pki", "init", str(d), "--station", "cs01", "--station", "cs02")
    assert r.returncode == 0, r.stderr
    assert mode(d) == 0o700 and mode(d / "stations") == 0o700
    for key in (d / "ca.key", d / "controller.key", d / "stations" / "cs01.key", d / "stations" / "cs02.key"):
        assert mode(key) == 0o600, key
    ca = cert(d / "ca.pem")
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    server = cert(d / "controller.pem")
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert ExtendedKeyUsageOID.SERVER_AUTH in server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    for sid in ("cs01", "cs02"):
        station = cert(d / "stations" / f"{sid}.pem")
        assert station.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == sid
        assert station.issuer == ca.subject
        station.verify_directly_issued_by(ca)
        assert ExtendedKeyUsageOID.CLIENT_AUTH in station.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value


def test_every_server_name_becomes_a_dns_or_ip_san(tmp_path):
    d = tmp_path / "pki"
    r = v2g("pki", "init", str(d), "--station", "cs01", "--server-name", "depot.local", "--server-name", "192.0.2.10",
            "--server-name", "::1")
    assert r.returncode == 0, r.stderr
    san = cert(d / "controller.pem").extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["depot.local"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("192.0.2.10"), ipaddress.ip_address("::1")]


def test_pki_init_refuses_to_overwrite_anything(tmp_path):
    d = tmp_path / "pki"
    assert v2g("pki", "init", str(d), "--station", "cs01").returncode == 0
    before = {p: p.read_bytes() for p in d.rglob("*") if p.is_file()}
    r = v2g("pki", "init", str(d), "--station", "cs02")          # the CA exists: nothing written
    assert r.returncode == 1 and "ERR_PKI_EXISTS" in r.stderr and "ca.pem" in r.stderr
    assert {p: p.read_bytes() for p in d.rglob("*") if p.is_file()} == before


def test_pki_init_refuses_station_ids_that_are_no_url_segment(tmp_path):
    r = v2g("pki", "init", str(tmp_path / "pki"), "--station", "cs/01")
    assert r.returncode == 1 and "ERR_PKI_STATION_ID" in r.stderr and not (tmp_path / "pki").exists()
