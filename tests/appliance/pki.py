"""A test PKI made with ``cryptography``: a hospital CA with server and client certificates, and a
rogue CA whose certificates carry the same names (they must be refused all the same)."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _name(org: str, cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, org), x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(folder: Path, name: str, key, cert) -> None:
    (folder / f"{name}.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                           serialization.NoEncryption()))
    (folder / f"{name}.key").chmod(0o600)
    (folder / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


class CA:
    def __init__(self, folder: Path, name: str, org: str) -> None:
        self.folder, self.name = folder, name
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        self.subject = _name(org, f"{org} test CA")
        self.cert = (x509.CertificateBuilder().subject_name(self.subject).issuer_name(self.subject)
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=2))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                     .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
                     .sign(self.key, hashes.SHA256()))
        _write(folder, name, self.key, self.cert)
        self.pem = folder / f"{name}.pem"

    def issue(self, name: str, cn: str, *, server: bool = False, hosts: tuple[str, ...] = ()) -> tuple[Path, Path]:
        """(certificate, key) files for ``cn``; ``hosts`` become subjectAltNames (DNS or IP)."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH] + ([ExtendedKeyUsageOID.SERVER_AUTH] if server else [])
        builder = (x509.CertificateBuilder().subject_name(_name(self.subject.get_attributes_for_oid(
                       NameOID.ORGANIZATION_NAME)[0].value, cn)).issuer_name(self.subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=2))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.ExtendedKeyUsage(usages), critical=False))
        if hosts:
            names = []
            for host in hosts:
                try:
                    names.append(x509.IPAddress(ipaddress.ip_address(host)))
                except ValueError:
                    names.append(x509.DNSName(host))
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        _write(self.folder, name, key, cert)
        return self.folder / f"{name}.pem", self.folder / f"{name}.key"


def make_pki(folder: Path) -> dict[str, Path]:
    """hospital CA: box (server+client, localhost/127.0.0.1), modality (client), pacs (server+client);
    rogue CA: a client named like the modality, a server named like the PACS."""
    folder.mkdir(parents=True, exist_ok=True)
    hospital, rogue = CA(folder, "hospital-ca", "Hospital"), CA(folder, "rogue-ca", "Elsewhere")
    out = {"ca": hospital.pem, "rogue_ca": rogue.pem}
    for name, ca, cn, server in (("box", hospital, "hipcad.local", True), ("modality", hospital, "MODALITY", False),
                                 ("pacs", hospital, "pacs.local", True), ("rogue_client", rogue, "MODALITY", False),
                                 ("rogue_pacs", rogue, "pacs.local", True)):
        cert, key = ca.issue(name, cn, server=server, hosts=("localhost", "127.0.0.1", cn) if server else ())
        out[name], out[f"{name}_key"] = cert, key
    return out
