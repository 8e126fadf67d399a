"""TLS for DICOM (PS3.15 Annex B secure transport connection profiles, BCP 195: TLS 1.2 or later).

Inbound, the listener requires a client certificate issued by ``dicom_tls_ca`` (the modalities'
CA) and presents ``dicom_tls_cert``; the handshake runs in the connection's thread
(:mod:`.server`). Outbound, the forwarder verifies the PACS certificate against ``pacs_tls_ca`` and
the destination's host name, and presents our certificate (``pacs_tls_cert``, else
``dicom_tls_cert``) when the PACS asks for one.
"""

from __future__ import annotations

import ssl

from hipcad.appliance.config import Config, ConfigError


def _load(what: str, action) -> None:
    try:
        action()
    except (OSError, ssl.SSLError) as err:
        raise ConfigError(f"{what}: {getattr(err, 'strerror', None) or err}") from err


def server_context(config: Config) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    _load(f"dicom_tls_cert/dicom_tls_key ({config.dicom_tls_cert})",
          lambda: ctx.load_cert_chain(config.dicom_tls_cert, config.dicom_tls_key))
    ctx.verify_mode = ssl.CERT_REQUIRED
    _load(f"dicom_tls_ca ({config.dicom_tls_ca})", lambda: ctx.load_verify_locations(cafile=config.dicom_tls_ca))
    return ctx


def client_context(config: Config) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # check_hostname and CERT_REQUIRED
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    _load(f"pacs_tls_ca ({config.pacs_tls_ca})", lambda: ctx.load_verify_locations(cafile=config.pacs_tls_ca))
    cert = config.pacs_tls_cert or config.dicom_tls_cert
    key = config.pacs_tls_key or config.dicom_tls_key
    if cert:
        _load(f"our client certificate ({cert})", lambda: ctx.load_cert_chain(cert, key or None))
    return ctx
