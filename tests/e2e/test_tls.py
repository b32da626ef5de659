"""TLS on the gateway with the test's own CA: pyarrow.flight over TLS, mutual TLS refusing a
client without a certificate, and a certificate replaced on disk taking effect without a restart."""

import datetime
import ipaddress
import socket
import time
from pathlib import Path

import adbc_driver_flightsql.dbapi as flightsql
import pyarrow.flight as flight
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from conftest import READY_LINE, Quiver, metric_samples

QUERY = b"SELECT count(*) AS n FROM nation"


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


class CA:
    """A throwaway certificate authority."""

    def __init__(self, name: str):
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        self.cert = (x509.CertificateBuilder()
                     .subject_name(_name(name)).issuer_name(_name(name))
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now - datetime.timedelta(minutes=5))
                     .not_valid_after(now + datetime.timedelta(days=1))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                     .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                                  content_commitment=False, key_encipherment=False,
                                                  data_encipherment=False, key_agreement=False,
                                                  encipher_only=False, decipher_only=False), critical=True)
                     .sign(self.key, hashes.SHA256()))
        self.pem = self.cert.public_bytes(serialization.Encoding.PEM)

    def issue(self, cn: str, server: bool) -> tuple[bytes, bytes]:
        """A leaf certificate and key (PEM) for a server on 127.0.0.1 or for a client."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        builder = (x509.CertificateBuilder()
                   .subject_name(_name(cn)).issuer_name(self.cert.subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.ExtendedKeyUsage(
                       [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False))
        if server:
            builder = builder.add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        return cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)


class TlsQuiver(Quiver):
    """`quiver up` with TLS: it announces a grpc+tls endpoint."""

    def _check_ready(self):
        m = READY_LINE.match(self.ready_line.replace("grpc+tls://", "grpc://", 1))
        assert m and self.ready_line == f"quiver ready: grpc+tls://127.0.0.1:{self.port}", self.ready_line
        self.endpoint = f"grpc+tls://127.0.0.1:{self.port}"


def write_server(dir: Path, ca: CA) -> tuple[Path, Path]:
    cert, key = ca.issue("quiver-gateway", server=True)
    (dir / "tls.crt").write_bytes(cert)
    (dir / "tls.key").write_bytes(key)
    return dir / "tls.crt", dir / "tls.key"


def query(endpoint: str, **tls) -> int:
    client = flight.connect(endpoint, **tls)
    try:
        return client.do_get(flight.Ticket(QUERY)).read_all().column("n")[0].as_py()
    finally:
        client.close()


def adbc_query(endpoint: str, **options: str) -> int:
    kwargs = {f"adbc.flight.sql.client_option.{k}": v for k, v in options.items()}
    with flightsql.connect(endpoint, autocommit=True, db_kwargs=kwargs) as conn, conn.cursor() as cur:
        cur.execute(QUERY.decode())
        return cur.fetchone()[0]


def do_gets_by_transport(admin_url: str) -> dict[str, float]:
    """`quiver_dispatch_do_get_total` by transport, from the gateway's metrics."""
    return {labels["transport"]: value
            for labels, value in metric_samples(admin_url, "quiver_dispatch_do_get_total")}


def test_plain_clients_reach_workers_by_fetch(start_quiver):
    q = start_quiver()
    assert query(q.endpoint) == 25
    assert do_gets_by_transport(q.admin_url) == {"fetch": 1.0}


def test_tls_with_own_ca(tmp_path, data_dir, logs):
    ca = CA("quiver test CA")
    cert, key = write_server(tmp_path, ca)
    q = TlsQuiver(data_dir, 0.01, 1, ["--tls-cert", str(cert), "--tls-key", str(key)], logs)
    try:
        assert query(q.endpoint, tls_root_certs=ca.pem) == 25
        assert adbc_query(q.endpoint, tls_root_certs=ca.pem.decode()) == 25
        # TLS connections are served on the io threads like plain ones, so their DoGets reach
        # workers by the fetch exchange (ADBC adds DoGets of its own, for metadata).
        by_transport = do_gets_by_transport(q.admin_url)
        assert set(by_transport) == {"fetch"} and by_transport["fetch"] >= 2, by_transport
        # The system roots do not know the test CA: the handshake fails.
        with pytest.raises(flight.FlightUnavailableError):
            query(q.endpoint)
        # Plain gRPC to a TLS port fails too.
        with pytest.raises(flight.FlightUnavailableError):
            query(q.endpoint.replace("grpc+tls://", "grpc://"))
    finally:
        assert q.stop() == 0


def test_silent_and_garbled_handshakes_hold_up_no_other_client(tmp_path, data_dir, logs):
    """Each handshake runs in its own task on the io thread given the connection: clients that
    connect and say nothing, or stop halfway through a ClientHello, on every io thread, do not
    delay a client that completes its handshake."""
    ca = CA("quiver test CA")
    cert, key = write_server(tmp_path, ca)
    q = TlsQuiver(data_dir, 0.01, 1, ["--tls-cert", str(cert), "--tls-key", str(key),
                                      "--io-threads", "2"], logs)
    stalled = []
    try:
        for i in range(16):
            s = socket.create_connection(("127.0.0.1", q.port))
            if i % 2:
                s.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # a ClientHello cut short
            stalled.append(s)
        for _ in range(4):  # new connections, dealt over both io threads
            started = time.monotonic()
            assert query(q.endpoint, tls_root_certs=ca.pem) == 25
            # The handshake timeout is 10 s: a client queued behind a stalled one would wait it out.
            assert time.monotonic() - started < 5, "a complete handshake waited on stalled ones"
    finally:
        for s in stalled:
            s.close()
        assert q.stop() == 0


def test_mutual_tls_refuses_clients_without_a_certificate(tmp_path, data_dir, logs):
    ca = CA("quiver test CA")
    clients = CA("quiver client CA")
    cert, key = write_server(tmp_path, ca)
    (tmp_path / "clients.pem").write_bytes(clients.pem)
    q = TlsQuiver(data_dir, 0.01, 1, ["--tls-cert", str(cert), "--tls-key", str(key),
                                      "--tls-client-ca", str(tmp_path / "clients.pem")], logs)
    try:
        client_cert, client_key = clients.issue("analyst", server=False)
        assert query(q.endpoint, tls_root_certs=ca.pem, cert_chain=client_cert, private_key=client_key) == 25
        assert adbc_query(q.endpoint, tls_root_certs=ca.pem.decode(), mtls_cert_chain=client_cert.decode(),
                          mtls_private_key=client_key.decode()) == 25
        with pytest.raises(flight.FlightUnavailableError):
            query(q.endpoint, tls_root_certs=ca.pem)
        # A certificate from another CA is refused as well.
        stranger_cert, stranger_key = CA("other CA").issue("stranger", server=False)
        with pytest.raises(flight.FlightUnavailableError):
            query(q.endpoint, tls_root_certs=ca.pem, cert_chain=stranger_cert, private_key=stranger_key)
    finally:
        assert q.stop() == 0


def test_certificate_is_reloaded_when_the_files_change(tmp_path, data_dir, logs):
    old_ca, new_ca = CA("old CA"), CA("new CA")
    cert, key = write_server(tmp_path, old_ca)
    q = TlsQuiver(data_dir, 0.01, 1, ["--tls-cert", str(cert), "--tls-key", str(key)], logs)
    try:
        assert query(q.endpoint, tls_root_certs=old_ca.pem) == 25
        # Replace both files the way a Secret update does: new files swapped in by rename.
        staging = tmp_path / "staging"
        staging.mkdir()
        new_cert, new_key = write_server(staging, new_ca)
        new_key.rename(key)
        new_cert.rename(cert)
        # The files are polled every 2 s: wait for the gateway to say it reloaded.
        deadline = time.monotonic() + 30
        while "TLS certificate reloaded" not in q.log_path.read_text(errors="replace"):
            assert time.monotonic() < deadline, q.log_tail()
            time.sleep(0.1)  # polling a log file: there is no event to await
        assert query(q.endpoint, tls_root_certs=new_ca.pem) == 25
        with pytest.raises(flight.FlightUnavailableError):
            query(q.endpoint, tls_root_certs=old_ca.pem)
    finally:
        assert q.stop() == 0
