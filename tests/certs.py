"""Certificates made at test time, in the shapes real clusters serve them.

trustme makes certificates that satisfy every rule OpenSSL knows; clusters in the field do not
always: older ones have a CA without keyUsage or subject key identifier, and a server
certificate without authority key identifier. client-go accepts those, so the entrypoint must
too, while refusing what client-go refuses (another CA, another name, outside its validity, a
name only in the subject's CN). Uses `cryptography`, which trustme already needs.
"""

import datetime
import ipaddress

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

DAY = datetime.timedelta(days=1)


def _name(common_name):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem(certificate):
    return certificate.public_bytes(serialization.Encoding.PEM)


def _san(names):
    """IP addresses as IP entries, the rest as DNS names."""
    entries = []
    for name in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


class Authority:
    """A self-signed CA; `key_usage` and `subject_key_id` False leave those extensions out."""

    def __init__(self, name="test-cluster-ca", key_usage=True, subject_key_id=True):
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        builder = (x509.CertificateBuilder()
                   .subject_name(_name(name)).issuer_name(_name(name))
                   .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - DAY).not_valid_after(now + 365 * DAY)
                   .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True))
        if key_usage:
            builder = builder.add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False), critical=True)
        if subject_key_id:
            builder = builder.add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()), critical=False)
        self.certificate = builder.sign(self.key, hashes.SHA256())
        self.pem = _pem(self.certificate)

    def issue(self, names=("127.0.0.1", "localhost"), authority_key_id=True, valid_from=-1,
              valid_until=30, common_name="kube-apiserver"):
        """(certificate PEM, key PEM) of a server certificate for `names` (its SAN; none when
        empty), valid from/until that many days from now."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        builder = (x509.CertificateBuilder()
                   .subject_name(_name(common_name)).issuer_name(self.certificate.subject)
                   .public_key(key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now + valid_from * DAY).not_valid_after(now + valid_until * DAY)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True))
        if names:
            builder = builder.add_extension(_san(names), critical=False)
        if authority_key_id:
            builder = builder.add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False)
        certificate = builder.sign(self.key, hashes.SHA256())
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())
        return _pem(certificate), key_pem
