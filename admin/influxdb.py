"""InfluxDB's one user on the control host: Debian's InfluxDB runs with authentication on
(deploy/systemd/influxdb.service.d), and, once it answers, its unit runs `gpuacct-admin
influxdb-user`: the user `gpuacct` with the password in secrets/influxdb-password, and the
database billing writes to. Run again, it checks the password still lets in and changes
nothing."""

from __future__ import annotations

import time
from pathlib import Path

from admin.backup import AdminError
from gpuacct import http
from stack.servers import BasicAuthUser, influx_query

INFLUXDB = "127.0.0.1:8086"
USER, DATABASE = "gpuacct", "gpuacct"
PASSWORD = "influxdb-password"  # in secrets/


def _wait(url: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            http.get(f"{url}/ping", 5)
            return
        except http.HttpError as exc:
            if time.monotonic() > deadline:
                raise AdminError(f"InfluxDB did not answer at {url} within {seconds:.0f} s "
                                 f"({exc})") from None
            time.sleep(0.2)


def make_user(secrets: Path, url: str = f"http://{INFLUXDB}", wait_seconds: float = 60) -> str:
    """What was done, in a few words."""
    user = BasicAuthUser(USER, secrets / PASSWORD)
    try:
        password = user.password_file.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise AdminError(f"{user.password_file}: {exc.strerror} (run `gpuacct-admin init`)") \
            from None
    if not password or "'" in password or "\\" in password:
        raise AdminError(f"{user.password_file}: a password, without ' or \\, is needed")
    _wait(url, wait_seconds)
    made = "kept"
    try:  # allowed without credentials only while InfluxDB has no user at all
        influx_query(url, f"CREATE USER \"{USER}\" WITH PASSWORD '{password}' WITH ALL "
                          "PRIVILEGES", method="POST")
        made = "made"
    except http.HttpError as exc:
        if exc.status not in (401, 403):
            raise AdminError(f"InfluxDB at {url}: {exc}") from None
    try:
        influx_query(url, f'CREATE DATABASE "{DATABASE}"', method="POST", auth=user)
    except http.HttpError as exc:
        raise AdminError(f"InfluxDB at {url} has users, and {USER} with the password in "
                         f"{user.password_file} is not let in ({exc})") from None
    return f"InfluxDB user {USER} {made}, database {DATABASE} there"
