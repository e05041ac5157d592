"""The job store as the web reads it: read-only, opened when first asked for."""

from __future__ import annotations

import threading

from fastapi import HTTPException

from gpuacct import store
from gpuacct.config import Settings
from gpuacct.store import places
from jobstore.store import JobStore
from ledger import SchemaError


class JobsView:
    """The job store, read-only, opened when first asked for (gpuacct-billing makes it)."""

    def __init__(self, settings: Settings) -> None:
        self.target = places.jobs(settings)
        self._store: JobStore | None = None
        self._lock = threading.Lock()

    def store(self) -> JobStore | None:
        """None until gpuacct-billing has made the store: no job is kept yet."""
        with self._lock:
            if self._store is None:
                if not store.exists(self.target):
                    return None
                try:
                    self._store = JobStore(self.target, readonly=True)
                except (SchemaError, OSError) as exc:
                    raise HTTPException(503, f"the job store cannot be read: {exc}") from None
            return self._store
