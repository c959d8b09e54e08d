"""Fixtures for tests against a real etcd (and, later, real node agents)."""

import pytest

from lab.cluster import Cluster
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


# -- clusters of node namespaces with real agents (root) ------------------------


@pytest.fixture
def cluster(tmp_path, installed):
    made = Cluster(tmp_path / "cluster", installed)
    yield made
    made.cleanup()
