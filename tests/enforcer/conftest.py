"""The enforcer suite runs on both stores: every enforcer a test starts keeps its state (and the
allocator's, the notices') in a SQLite file, then in a PostgreSQL database."""

from __future__ import annotations

import pytest

from gpuacct.store import Target
from tests.fixtures.enforcement import Cluster


@pytest.fixture
def cluster(cluster: Cluster, store_target: Target) -> Cluster:
    cluster.database = store_target
    return cluster
