"""Shared fixtures: real servers, real users and processes, fake GPUs."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.fixtures.docker import dockerd  # noqa: F401 (fixtures)
from tests.fixtures.enforcement import cluster  # noqa: F401 (fixtures)
from tests.fixtures.exporter import start_exporter  # noqa: F401 (fixtures)
from tests.fixtures.gating import devices_group  # noqa: F401 (fixtures)
from tests.fixtures.install import installed_gpuacct  # noqa: F401 (fixtures)
from tests.fixtures.ldap import slapd  # noqa: F401 (fixtures)
from tests.fixtures.ledger import store_target  # noqa: F401 (fixtures)
from tests.fixtures.notices import chat_receiver, smtp_server  # noqa: F401 (fixtures)
from tests.fixtures.postgres import pg_database, postgres_server  # noqa: F401 (fixtures)
from tests.fixtures.servers import (  # noqa: F401 (fixtures)
    RUNNING,
    influxdb,
    start_alertmanager,
    start_billing,
    start_prometheus,
    start_victoria_metrics,
    static_metrics,
    webhook_receiver,
)
from tests.fixtures.tls import tls  # noqa: F401 (fixtures)
from tests.fixtures.users import (  # noqa: F401 (fixtures)
    lab_group,
    processes,
    shared_dir,
    test_users,
)
from tests.fixtures.workers import alone_or_beside_others, isolate_workers


def pytest_configure(config: pytest.Config) -> None:
    isolate_workers(config)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    with alone_or_beside_others(item):
        yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Iterator[None]:
    """A failing test's report ends with the log tail of every server it had running."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.failed:
        for proc in RUNNING:
            report.sections.append((f"{proc.name} log ({proc.log_path})", proc.log_tail()))
