"""Simulated GPUs for `gpuacct-stack --demo`, clearly labelled as such in their model names.

A process is "on" simulated GPU N when its environment has GPUACCT_DEMO_GPU=N, so a person
trying gpuacct can start `GPUACCT_DEMO_GPU=0 python3 train.py` and watch it get billed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psutil

DEMO_ENV = "GPUACCT_DEMO_GPU"
DEMO_GPUS = (
    ("Simulated NVIDIA A100-SXM4-80GB (gpuacct demo)", 85_899_345_920),
    ("Simulated NVIDIA GeForce RTX 3090 (gpuacct demo)", 25_769_803_776),
)
_MIB = 1 << 20


def demo_source(users: list[str] | None = None) -> Callable[[], dict[str, Any]]:
    """`users`: whose processes may be on a simulated GPU (None: anyone's), so a demo never
    bills or stops another user's process for an environment variable."""
    allowed = None if users is None else set(users)

    def data() -> dict[str, Any]:
        on_gpu: dict[int, list[dict[str, Any]]] = {i: [] for i in range(len(DEMO_GPUS))}
        for proc in psutil.process_iter(["pid", "environ", "memory_info", "username"]):
            if allowed is not None and proc.info.get("username") not in allowed:
                continue
            env = proc.info.get("environ") or {}
            value = env.get(DEMO_ENV, "")
            if value.isdigit() and int(value) in on_gpu:
                rss = proc.info["memory_info"].rss if proc.info.get("memory_info") else 0
                on_gpu[int(value)].append(
                    {"pid": proc.pid, "used_memory": 512 * _MIB + rss, "sm_util": 80})
        return {
            "driver_version": "simulated",
            "devices": [
                {
                    "uuid": f"GPU-00000000-0000-0000-0000-demo0000000{i}",
                    "name": name,
                    "memory_total": total,
                    "memory_used": sum(p["used_memory"] for p in on_gpu[i]),
                    "utilization": 80 if on_gpu[i] else 0,
                    "memory_utilization": 30 if on_gpu[i] else 0,
                    "temperature": 65 if on_gpu[i] else 35,
                    "power_mw": 250_000 if on_gpu[i] else 60_000,
                    "processes": on_gpu[i],
                }
                for i, (name, total) in enumerate(DEMO_GPUS)
            ],
        }

    return data
