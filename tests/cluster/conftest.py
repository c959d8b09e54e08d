"""Fixtures for tests against a real etcd (and, later, real node agents)."""

import pytest

from lab.etcd import EtcdServer


# --- etcd: one throwaway member per test, stopped by its own PID afterwards -------------
@pytest.fixture
def etcd(tmp_path):
    server = EtcdServer(tmp_path / "etcd")
    try:
        server.start()
        yield server
    finally:
        server.stop()
