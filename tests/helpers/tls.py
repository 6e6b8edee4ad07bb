"""TLS contexts from certificates generated at test time (with ``trustme``).

The fixtures are in conftest.py: ``tls_ca`` (session: a throw-away certificate authority),
``server_cert`` (session: a certificate that CA issued for ``SERVER_NAMES``),
``server_context`` and ``client_context`` (made for each test, so that a test may change its
own). ``make_server_context`` and ``make_client_context`` make more contexts from the same
certificates.
"""

import ssl

import trustme

SERVER_NAMES = ("localhost", "127.0.0.1")  # the identities server_cert is issued for


def make_server_context(cert: trustme.LeafCert) -> ssl.SSLContext:
    """A server-side context presenting ``cert``."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    cert.configure_cert(context)
    return context


def make_client_context(ca: trustme.CA) -> ssl.SSLContext:
    """A client-side context trusting only ``ca``; it verifies certificates and host names."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED, check_hostname, no CA yet
    ca.configure_trust(context)
    return context
