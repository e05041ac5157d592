"""What every gpuacct command line shares: --config, --web.listen-address, logging, exit codes."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from gpuacct.build import add_version_argument
from gpuacct.config import ConfigError, Settings, load_settings, split_listen_address
from gpuacct.listener import WebConfig, WebConfigError, load_web_config


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="YAML config file (default: $GPUACCT_CONFIG, else /etc/gpuacct/gpuacct.yaml "
             "where readable, else built-in defaults)",
    )


def _run_arguments(parser: argparse.ArgumentParser, serves: str, default: Any) -> None:
    parser.add_argument("--web.listen-address", dest="listen_address", metavar="HOST:PORT",
                        default=default,
                        help=f"address to serve {serves} on (overrides the config file)")
    parser.add_argument("--web.config.file", dest="web_config_file", metavar="FILE",
                        default=default, type=Path,
                        help="TLS and basic auth for the listener, in the exporter-toolkit "
                             "format Prometheus reads (tls_server_config, basic_auth_users)")
    parser.add_argument("-v", "--verbose", action="store_true", default=default,
                        help="debug logging")


def service_parser(prog: str, doc: str | None, run_help: str, serves: str,
                   bare_runs: bool = False) -> tuple[argparse.ArgumentParser, Any]:
    """Every service's command line: `PROG [--config FILE] COMMAND`, with a `run` command
    taking --web.listen-address and -v. Returns the parser and its subparsers for the
    service's other commands. `bare_runs`: PROG with no command runs too, its run options
    before any command (the exporter's form in units written before it had `run`)."""
    parser = argparse.ArgumentParser(prog=prog, description=doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_version_argument(parser)
    add_config_argument(parser)
    if bare_runs:
        _run_arguments(parser, serves, None)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    # SUPPRESS: a run option given before the command is not reset by the command's parser.
    _run_arguments(sub.add_parser("run", help=run_help), serves,
                   argparse.SUPPRESS if bare_runs else None)
    return parser, sub


def command_or_usage(parser: argparse.ArgumentParser, args: argparse.Namespace,
                     bare: str | None = None) -> str:
    """The command given (or `bare` for none); with neither, the usage and exit status 2."""
    command: str | None = args.command or bare
    if command is None:
        parser.print_usage(sys.stderr)
        print(f"{parser.prog}: say what to do, e.g. `{parser.prog} run` (see --help)",
              file=sys.stderr)
        raise SystemExit(2)
    return command


def parse_listen_address(value: str) -> tuple[str, int]:
    try:
        return split_listen_address(value)
    except ValueError as exc:
        raise SystemExit(f"--web.listen-address {value!r}: {exc}") from None


def load_or_exit(path: str | None) -> Settings:
    """Settings, or the config problems on stderr and exit status 2 (tls_client_config's
    files are read now: one that cannot be used is a config problem too)."""
    try:
        settings = load_settings(path)
        settings.tls_client_config.context()
        return settings
    except ConfigError as exc:
        print(f"gpuacct: config error: {exc}".replace("\n", "\ngpuacct: config error: "),
              file=sys.stderr)
        raise SystemExit(2) from None


def web_config_or_exit(args: argparse.Namespace, prog: str) -> WebConfig:
    """The listener's `--web.config.file` (none: plain HTTP, no basic auth), or its problem on
    stderr and exit status 2."""
    path: Path | None = getattr(args, "web_config_file", None)
    if path is None:
        return WebConfig()
    try:
        return load_web_config(path)
    except WebConfigError as exc:
        print(f"{prog}: --web.config.file: {exc}", file=sys.stderr)
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
