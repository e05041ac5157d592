"""SIGHUP re-reads a service's secrets from its config, as Prometheus reloads on SIGHUP: a
secret is rotated (two accepted, then the new one alone) without stopping anything.

Only the secrets change; every other setting takes a restart. A config that does not load
is refused whole and the secrets in use stay, so a typo cannot lock the nodes out."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType

from gpuacct.config import ConfigError, Settings, load_settings


def reload_on_sighup(config_path: str | None, apply: Callable[[Settings], str],
                     log: logging.Logger) -> None:
    """On each SIGHUP, `apply(settings)` with the config read again; it returns what it
    changed (counts of secrets, never their values) or raises ValueError to refuse."""
    lock = threading.Lock()  # two quick SIGHUPs: the second reads after the first applied

    def reload() -> None:
        with lock:
            try:
                changed = apply(load_settings(config_path))
            except (ConfigError, ValueError) as exc:
                log.error("reload refused, the secrets in use stay: %s", exc)
                return
            log.info("reloaded: %s", changed)

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        # Not in the handler itself: it interrupts whatever the main thread was doing.
        threading.Thread(target=reload, name="reload", daemon=True).start()

    signal.signal(signal.SIGHUP, on_signal)
