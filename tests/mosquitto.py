"""A real Mosquitto broker on loopback for the MQTT tests: a test CA, a server and a client
certificate made with `cryptography`, a TLS listener that requires client certificates on a free
port, started and stopped (or killed) by the test."""
from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(key, path: Path) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))


class CA:
    """A certificate authority that signs server and client certificates into a folder."""

    def __init__(self, folder: Path, name: str = "v2g test CA"):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        self.cert = (x509.CertificateBuilder().subject_name(_name(name)).issuer_name(_name(name))
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=365))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                     .sign(self.key, hashes.SHA256()))
        self.path = folder / f"{name.replace(' ', '-')}.pem"
        self.path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, cn: str, days: float = 365, server: bool = False) -> tuple[Path, Path]:
        """A certificate and its key for cn, valid `days` from now: (cert path, key path)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        builder = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(self.cert.subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=days)))
        if server:
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        cert_path, key_path = self.folder / f"{cn}.crt", self.folder / f"{cn}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(key, key_path)
        return cert_path, key_path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """Mosquitto with one mutual-TLS listener on 127.0.0.1:port; start(), stop(), kill(), and
    start() again on the same port (a broker outage and its return)."""

    def __init__(self, folder: Path, ca: CA | None = None, port: int | None = None, anonymous: bool = True,
                 persistent: bool = False):
        """anonymous=False: no client is authorised (its certificate is not its identity and
        there is no password file), so every CONNECT gets a refusing CONNACK. persistent: sessions
        are saved at every change, so a persistent subscriber's session outlives a kill -9."""
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.ca = ca or CA(folder / "pki")
        self.cert, self.key = self.ca.issue("localhost", server=True)
        self.port = port or free_port()
        self.conf = folder / "mosquitto.conf"
        flag = str(anonymous).lower()
        saved = [f"persistence_location {folder}/", "autosave_interval 1", "autosave_on_changes true"]
        lines = [f"allow_anonymous {flag}", f"persistence {str(persistent).lower()}", *(saved if persistent else []),
                 "log_dest stderr", "log_type error",
                 "log_type warning", "set_tcp_nodelay true", f"listener {self.port} 127.0.0.1",
                 f"cafile {self.ca.path}", f"certfile {self.cert}", f"keyfile {self.key}", "require_certificate true",
                 f"use_identity_as_username {flag}"]
        if os.geteuid() == 0:      # else it drops to user "mosquitto", who cannot read pytest's private tmp_path
            lines.insert(0, "user root")
        self.conf.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen | None = None

    def start(self) -> Broker:
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=open(self.folder / "mosquitto.log", "ab"))
        end = time.monotonic() + 10
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {(self.folder / 'mosquitto.log').read_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("mosquitto did not listen within 10 s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def __enter__(self) -> Broker:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.kill()

    def client(self, name: str = "aggregator", persistent: bool = False):
        """A connected paho client with its own certificate (the aggregator's side); messages it
        receives land in .received as (topic, payload, retain). persistent: its session (its
        subscriptions, the messages queued for it) lasts an hour after it goes away."""
        import paho.mqtt.client as mqtt
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        cert, key = self.ca.issue(name)
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name, protocol=mqtt.MQTTv5)
        c.tls_set(ca_certs=str(self.ca.path), certfile=str(cert), keyfile=str(key))
        c.received = []
        c.on_message = lambda cl, ud, msg: c.received.append((msg.topic, msg.payload, msg.retain))
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600 if persistent else 0
        c.connect("127.0.0.1", self.port, clean_start=not persistent, properties=props)
        c.loop_start()
        end = time.monotonic() + 10
        while not c.is_connected():
            assert time.monotonic() < end, "the test client did not connect"
            time.sleep(0.01)
        return c
