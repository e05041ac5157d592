"""What every gpuacct command line shares: --config, --web.listen-address, logging, exit codes."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from types import FrameType
from typing import Any

from gpuacct.config import ConfigError, Settings, load_settings, split_listen_address


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="YAML config file (default: $GPUACCT_CONFIG, else built-in defaults)",
    )


def add_listen_argument(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--web.listen-address",
        dest="listen_address",
        metavar="HOST:PORT",
        help=f"address to serve {what} on (overrides the config file)",
    )


def service_parser(prog: str, doc: str | None, run_help: str,
                   serves: str) -> tuple[argparse.ArgumentParser, Any]:
    """A service's parser: --config, and a `run` subcommand with --web.listen-address and -v;
    returns the parser and its subparsers for the service's other commands."""
    parser = argparse.ArgumentParser(prog=prog, description=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_argument(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    run = sub.add_parser("run", help=run_help)
    add_listen_argument(run, serves)
    run.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser, sub


def parse_listen_address(value: str) -> tuple[str, int]:
    try:
        return split_listen_address(value)
    except ValueError as exc:
        raise SystemExit(f"--web.listen-address {value!r}: {exc}") from None


def load_or_exit(path: str | None) -> Settings:
    """Settings, or the config problems on stderr and exit status 2."""
    try:
        return load_settings(path)
    except ConfigError as exc:
        print(f"gpuacct: config error: {exc}".replace("\n", "\ngpuacct: config error: "),
              file=sys.stderr)
        raise SystemExit(2) from None


def setup_logging(service: str, verbose: bool = False) -> logging.Logger:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format=f"%(asctime)s {service} %(levelname)s %(name)s: %(message)s",
    )
    return logging.getLogger(service)


def stop_on_signals() -> threading.Event:
    """An event set by SIGTERM or SIGINT, for a service's main loop to end on."""
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return stop
