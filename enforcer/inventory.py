"""Which nodes are enrolled: the names (label `__gpuacct_node`) in the file_sd list
gpuacct-admin keeps and Prometheus scrapes, read again whenever the file changes. A file that
cannot be read enrols nobody: a removed node must never be let back in by a typo.

The label starts with `__`, so Prometheus drops it after relabelling: it never joins the
nodes' series (whose node is their `instance`)."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import yaml

log = logging.getLogger(__name__)
NODE_LABEL = "__gpuacct_node"
MAX_BYTES = 16 << 20  # 24 nodes take a few kilobytes; 100,000 a few megabytes


def names_in(text: str) -> frozenset[str]:
    """The node names of a file_sd list; ValueError names what is wrong."""
    try:
        entries = yaml.safe_load(text) or []
    except yaml.YAMLError as exc:
        raise ValueError(f"not YAML: {exc}") from None
    if not isinstance(entries, list):
        raise ValueError("not a file_sd list")
    names = set()
    for entry in entries:
        labels = entry.get("labels") if isinstance(entry, dict) else None
        node = labels.get(NODE_LABEL) if isinstance(labels, dict) else None
        if not isinstance(node, str) or not node:
            raise ValueError(f"an entry without the label {NODE_LABEL}: {str(entry)[:200]}")
        names.add(node)
    return frozenset(names)


class Enrolled:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen: tuple[int, int, int] | None = None
        self._names: frozenset[str] = frozenset()
        self._lock = threading.Lock()

    def __call__(self, node: str) -> bool:
        with self._lock:
            self._refresh()
            return node in self._names

    def _refresh(self) -> None:
        try:
            stat = self.path.stat()
        except OSError as exc:
            self._changed(None, f"cannot read it: {exc.strerror}")
            return
        seen = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        if seen == self._seen:
            return
        try:
            with self.path.open("rb") as f:
                text = f.read(MAX_BYTES + 1)
            if len(text) > MAX_BYTES:
                raise ValueError(f"over {MAX_BYTES} bytes")
            names = names_in(text.decode())
        except (OSError, ValueError) as exc:
            self._changed(seen, str(exc))
            return
        self._seen, self._names = seen, names
        log.info("%d node(s) enrolled in %s", len(names), self.path)

    def _changed(self, seen: tuple[int, int, int] | None, problem: str) -> None:
        if seen != self._seen or self._names:
            log.error("the node inventory %s: %s; no node may sync until it is fixed",
                      self.path, problem)
        self._seen, self._names = seen, frozenset()
