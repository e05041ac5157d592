"""Choose the GPU backend the config asks for; with no driver, keep retrying quietly."""

from __future__ import annotations

import logging
import time

from exporter.gpu import GpuBackend, GpuReading, GpuUnavailable
from gpuacct.config import NvmlSettings

log = logging.getLogger(__name__)


class RetryingNvml:
    """Real NVML that may not be there yet: unavailable is reported, and init retried at most
    every `retry_seconds`, so a driver loaded later is picked up without a restart."""

    def __init__(self, retry_seconds: float = 60.0) -> None:
        self.retry_seconds = retry_seconds
        self._backend: GpuBackend | None = None
        self._next_try = 0.0
        self._reason = ""

    def _open(self) -> GpuBackend:
        from exporter.nvml import NvmlBackend, check_distribution

        problem = check_distribution()
        if problem:
            log.warning("%s; install nvidia-ml-py", problem)
        return NvmlBackend()

    def read(self) -> GpuReading:
        if self._backend is None:
            if time.monotonic() < self._next_try:
                raise GpuUnavailable(self._reason)
            try:
                self._backend = self._open()
                log.info("NVML ready")
            except GpuUnavailable as exc:
                if str(exc) != self._reason:
                    log.warning("no NVIDIA GPU available (%s): metering CPU only", exc)
                self._reason = str(exc)
                self._next_try = time.monotonic() + self.retry_seconds
                raise
        return self._backend.read()

    def close(self) -> None:
        if self._backend is not None:
            self._backend.close()


def open_backend(settings: NvmlSettings) -> GpuBackend | None:
    """The configured backend; None for `off` (no GPU collector at all)."""
    if settings.backend == "off":
        return None
    if settings.backend == "auto":
        return RetryingNvml()

    from exporter.fake_nvml import FakeNvml, file_source
    from exporter.nvml import NvmlBackend

    if settings.backend == "demo":
        from exporter.demo import demo_source

        log.warning("DEMO MODE: GPUs are simulated; processes with GPUACCT_DEMO_GPU=N use GPU N")
        return NvmlBackend(FakeNvml(demo_source()))
    if settings.fake_file is None:
        raise GpuUnavailable("exporter.nvml.fake_file is required when backend is fake")
    log.warning("FAKE NVML from %s: for tests only", settings.fake_file)
    return NvmlBackend(FakeNvml(file_source(settings.fake_file)))
