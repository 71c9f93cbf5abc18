"""`v2g-rt pki init` and the [ocpp] section as an integrator uses them: files, modes, names,
refusals; config errors that name file, section and option."""
import datetime as dt
import ipaddress
import shutil
import stat
import subprocess
import sys
from importlib import resources

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from v2g_rt import config
from v2g_rt.config import ConfigError

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


OCPP_SITE = """
[site]
name = "t"
[node.grid]
kind = "grid"
import_limit_w = 50000
export_limit_w = 50000
[node.cs01]
kind = "evse"
parent = "grid"
link = "ocpp"
port_max_charge_w = 11000
[ocpp]
"""


@pytest.fixture(scope="module")
def pki_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("site") / "pki"
    assert v2g("pki", "init", str(d), "--station", "cs01").returncode == 0
    return d


def load(tmp_path, body):
    path = tmp_path / "site.toml"
    path.write_text(OCPP_SITE + body)
    return path, config.load(path)


def test_ocpp_paths_are_relative_to_the_config_file(pki_dir, tmp_path):
    shutil.copytree(pki_dir, tmp_path / "pki")
    _, site = load(tmp_path, 'listen = "[::1]:9443"\nca = "pki/ca.pem"\ncert = "pki/controller.pem"\n'
                             'key = "pki/controller.key"\n')
    cfg = site.sections["ocpp"]
    assert (cfg.host, cfg.port) == ("::1", 9443) and cfg.ca == tmp_path / "pki" / "ca.pem"


def test_ocpp_config_errors_name_file_section_and_option(pki_dir, tmp_path):
    with pytest.raises(ConfigError) as e:
        load(tmp_path, f'listen = "9443"\nca = "nowhere/ca.pem"\ncert = "{pki_dir}/ca.pem"\n'
                       f'key = "{pki_dir}/controller.key"\nlisten_port = 1\n')
    got = {(p.section, p.option): p for p in e.value.problems}
    assert str(got[("ocpp", "listen")]).startswith(f"ERR_CONFIG_VALUE: {tmp_path / 'site.toml'}: [ocpp] listen:")
    assert got[("ocpp", "ca")].code == "ERR_OCPP_CONFIG" and "no such file" in got[("ocpp", "ca")].message
    assert got[("ocpp", "listen_port")].code == "ERR_CONFIG_UNKNOWN_OPTION"
    with pytest.raises(ConfigError) as e:                  # a key that is not the certificate's
        load(tmp_path, f'listen = "127.0.0.1:9443"\nca = "{pki_dir}/ca.pem"\ncert = "{pki_dir}/controller.pem"\n'
                       f'key = "{pki_dir}/stations/cs01.key"\n')
    (p,) = e.value.problems
    assert (p.section, p.option, p.code) == ("ocpp", "cert", "ERR_OCPP_CONFIG")


def test_the_packaged_ocpp_depot_checks_once_its_pki_exists(tmp_path):
    example = resources.files("v2g_rt.data").joinpath("examples/ocpp-depot.toml")
    path = tmp_path / "ocpp-depot.toml"
    path.write_text(example.read_text())
    r = v2g("check", str(path))
    assert r.returncode == 2 and "[ocpp] cert" in r.stderr and "pki init" in r.stderr
    stations = [s for s in ("cs01", "cs02", "cs03", "cs04") for s in ("--station", s)]
    assert v2g("pki", "init", str(tmp_path / "pki"), *stations).returncode == 0
    r = v2g("check", str(path))
    assert r.returncode == 0 and "links ocpp" in r.stdout, r.stderr


def test_certificates_within_30_days_of_expiry_are_found(pki_dir):
    from v2g_rt import pki

    paths = [pki_dir / "ca.pem", pki_dir / "controller.pem"]
    assert pki.expiring(paths) == []
    leaf_end = pki.not_after(pki_dir / "controller.pem")
    assert pki.expiring(paths, now=leaf_end - dt.timedelta(days=29, hours=12)) == [(str(paths[1]), 29)]
    assert pki.expiring(paths, now=leaf_end + dt.timedelta(days=2)) == [(str(paths[1]), -2)]
