"""The device vendors a node's exporter reads: one registry entry each.

An entry names the vendor's settings (its section under `exporter:`, by the vendor's name)
and the exporter module that opens it. That module has `open(settings) -> GpuBackend | None`
and `present(settings) -> bool` (for `backends: auto`: whether its library is on the node).
The module is named, not imported, so the core stays free of the exporter; adding a vendor is
its entry here, its module and its fake.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import NonNegativeFloat

from gpuacct.config.base import OFF, Section


class NvmlSettings(Section):
    # auto: NVIDIA's driver if present, else CPU-only. fake: GPUs described by `fake_file`
    # (tests). demo: clearly labelled simulated GPUs for `gpuacct-stack --demo`. off: CPU-only.
    backend: Annotated[Literal["auto", "fake", "demo", "off"], OFF] = "auto"
    fake_file: Path | None = None
    # demo: only these users' processes are put on a simulated GPU by GPUACCT_DEMO_GPU (the
    # stack's demo names its own two); none: any user's.
    demo_users: list[str] | None = None


class AmdSmiSettings(Section):
    # AMD SMI is asked at most this often (a faster sampler reuses the last reading); its
    # RETRY and BUSY answers keep the previous reading too.
    min_interval_seconds: NonNegativeFloat = 1.0
    fake_file: Path | None = None  # GPUs described by this file (tests), not AMD SMI


class DcmiSettings(Section):
    # Where Ascend's driver puts the library; a bare name is looked up by the loader.
    library: str = "libdcmi.so"
    fake_file: Path | None = None  # NPUs described by this file (tests), not DCMI


@dataclass(frozen=True)
class Vendor:
    settings: type[Section]
    module: str  # exporter module with open(settings) and present(settings)


# In the order `backends: auto` reads them (and numbers their devices).
VENDORS: dict[str, Vendor] = {
    "nvml": Vendor(NvmlSettings, "exporter.devices.nvml"),
    "amdsmi": Vendor(AmdSmiSettings, "exporter.devices.amd_smi"),
    "dcmi": Vendor(DcmiSettings, "exporter.devices.dcmi"),
}
