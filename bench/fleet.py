"""Nodes and a control plane for the benchmarks: `gpuacct-exporter` processes on fake GPUs and
one `gpuacct-enforcer` pushing to them, all on loopback."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

from gpuacct.signing import node_key, sign
from stack.process import ManagedProcess, free_port


def signed_put(key: str, index: int, body: bytes) -> dict[str, str]:
    """The headers of a policy PUT to node `index`, signed with its own key (derived from the
    master key `key`, as the enforcer does)."""
    name = f"node{index}"
    return sign(node_key(key.encode(), name), name, "PUT", "/v1/policy", body)


def start_nodes(work: Path, count: int, key: str, gpus_per_node: int = 1,
                **actuator: Any) -> list[tuple[ManagedProcess, int, Path]]:
    """(process, port, fake GPU file) per node, node0 first, each with its own key from the
    master key `key`; `actuator` adds to each node's settings."""
    nodes = []
    for i in range(count):
        d = work / f"node{i}"
        d.mkdir()
        gpus = d / "gpus.json"
        gpus.write_text(json.dumps({"driver_version": "550", "devices": [
            {"uuid": f"GPU-{i}-{g}", "name": "NVIDIA A100-SXM4-80GB", "memory_total": 1 << 36,
             "processes": []} for g in range(gpus_per_node)]}))
        port = free_port()
        config = d / "gpuacct.yaml"
        config.write_text(yaml.safe_dump({
            "exporter": {"interval_seconds": 0.1, "state_file": str(d / "state.json"),
                         "nvml": {"backend": "fake", "fake_file": str(gpus)},
                         "actuator": {"node_name": f"node{i}", "cpu_limiter": "off",
                                      "state_file": str(d / "actuator.json"),
                                      "hook_dir": str(d / "hooks"), "kill_grace_seconds": 30,
                                      **{k: v(d) if callable(v) else v
                                         for k, v in actuator.items()}}},
            "auth": {"node_key": node_key(key.encode(), f"node{i}").decode()}}))
        proc = ManagedProcess(f"node{i}", [sys.executable, "-m", "exporter", "--config",
                                           str(config), "run", "--web.listen-address",
                                           f"127.0.0.1:{port}"], d / "exporter.log",
                              f"http://127.0.0.1:{port}/metrics")
        nodes.append((proc.start(), port, gpus))
    for proc, _, _ in nodes:
        proc.wait_ready()
    return nodes


def start_enforcer(work: Path, ports: list[int], key: str, token: str,
                   port: int | None = None) -> tuple[ManagedProcess, int]:
    port = port or free_port()
    config = work / "enforcer.yaml"
    config.write_text(yaml.safe_dump({
        "enforcer": {"database": str(work / "enforcer.sqlite3"),
                     "nodes": [f"http://127.0.0.1:{p}" for p in ports]},
        "auth": {"webhook_token": token, "node_master_key": key}}))
    proc = ManagedProcess("enforcer", [sys.executable, "-m", "enforcer", "--config",
                                       str(config), "run", "--web.listen-address",
                                       f"127.0.0.1:{port}"], work / "enforcer.log",
                          f"http://127.0.0.1:{port}/-/healthy")
    return proc.start().wait_ready(), port
