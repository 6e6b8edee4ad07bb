"""Helpers shared by the tests, one module per concern (fixtures and hooks are in
conftest.py; nothing imports conftest):

``helpers.loops``      the loop kinds under test, the leak checks (``LoopGuard``).
``helpers.processes``  child interpreters (``PYTHON``, ``child_env``, ``run_python``).
``helpers.net``        protocols, plain-socket peers and small steps of the network tests.
``helpers.tls``        TLS contexts from the test session's certificates.

tests/ is on ``sys.path`` (pytest puts the directory of the rootmost conftest.py there), so a
test module imports them as ``from helpers.net import Recorder`` or ``from helpers import net``.
"""
