"""TLS certificates generated at test time (with ``trustme``), for the tests that use TLS.

``tls_ca``          session fixture: a throw-away certificate authority (``trustme.CA``).
``server_cert``     session fixture: a certificate that CA issued for "localhost" and
                    "127.0.0.1" (``trustme.LeafCert``).
``server_context``  an ``ssl.SSLContext`` for servers, presenting ``server_cert``.
``client_context``  an ``ssl.SSLContext`` for clients, trusting only ``tls_ca``, with hostname
                    checks on (connect with ``server_hostname`` "localhost" or "127.0.0.1").

Generating the certificates is the slow part, done once per session; the contexts are made for
each test (cheap), so that a test may change its own. A test module makes the fixtures
available with ``server_context = tls_helpers.server_context``...; ``make_server_context`` and
``make_client_context`` make more contexts from the same certificates.
"""

import ssl

import pytest
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


@pytest.fixture(scope="session")
def tls_ca() -> trustme.CA:
    """A certificate authority made for this test session."""
    return trustme.CA()


@pytest.fixture(scope="session")
def server_cert(tls_ca) -> trustme.LeafCert:
    """A server certificate from ``tls_ca`` for "localhost" and "127.0.0.1"."""
    return tls_ca.issue_cert(*SERVER_NAMES)


@pytest.fixture
def server_context(server_cert) -> ssl.SSLContext:
    return make_server_context(server_cert)


@pytest.fixture
def client_context(tls_ca) -> ssl.SSLContext:
    return make_client_context(tls_ca)
