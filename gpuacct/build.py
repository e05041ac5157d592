"""Which gpuacct this is, for `--version` on every command and `gpuacct_build_info` on every
service's /metrics: the version, and the revision it was built from (a REVISION file the
wheelhouse build writes beside this module, else the git HEAD of the checkout it runs from,
else "unknown")."""

from __future__ import annotations

import argparse
import functools
import platform
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from gpuacct import __version__

VERSION = __version__
_HERE = Path(__file__).resolve().parent


@functools.cache
def revision() -> str:
    """Asked once per process, and only when shown: `gpuacct balance` runs at every login."""
    written = _HERE / "REVISION"
    if written.is_file():
        return written.read_text().strip()[:40] or "unknown"
    if not (_HERE.parent / ".git").exists():
        return "unknown"
    try:  # a checkout owned by another user is still read, never written
        found = subprocess.run(["git", "-c", "safe.directory=*", "-C", str(_HERE.parent),
                                "rev-parse", "--short=12", "HEAD"], capture_output=True,
                               text=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return found.stdout.strip() if found.returncode == 0 else "unknown"


def version_line(prog: str) -> str:
    return f"{prog} {VERSION} (revision {revision()}, Python {platform.python_version()})"


class _VersionAction(argparse.Action):
    """argparse's "version" action, with the line made only when asked for."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS,
                 default: Any = argparse.SUPPRESS, help: str | None = None) -> None:
        super().__init__(option_strings, dest, nargs=0, default=default,
                         help=help or "print the version and revision, and exit")

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:
        sys.stdout.write(version_line(parser.prog) + "\n")  # as argparse's "version" action
        parser.exit()


def add_version_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--version", action=_VersionAction)


class BuildInfo(Collector):
    """`gpuacct_build_info{version, revision, pythonversion} 1`, as Prometheus' own
    `prometheus_build_info`: which build each service runs, across the hosts."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        info = GaugeMetricFamily("gpuacct_build_info", "The gpuacct build this service runs.",
                                 labels=["version", "revision", "pythonversion"])
        info.add_metric([VERSION, revision(), platform.python_version()], 1)
        yield info
