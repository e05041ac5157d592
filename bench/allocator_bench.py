"""Benchmark: the allocator's placement, and a reservation's way from `reserve` to the node.

1. Placement. 100 nodes of 8 GPUs (two models), every GPU held with an end somewhere in the
   next 8 hours, 1,000 requests queued (1, 2, 4 or 8 GPUs; for 30 minutes, 1, 2, 4, 8 or 24
   hours, the round durations people ask for; a quarter of them for one model). One decision
   is one planning pass over the whole queue, as the allocator makes after every change: a
   slot, and so an estimated start, for each request.
   Peer in the same run: the naive first fit (grant what fits on the GPUs free now, plan
   nothing), on the same cluster and queue.
2. `reserve` to enforced. Ten `gpuacct-exporter` nodes (fake NVML) pulling from and pushed to
   one `gpuacct-enforcer`; each round reserves one GPU through node0's Unix socket (as root)
   and times until the granted node's /metrics shows it reserved (`gpuacct_gpu_reserved`),
   then releases it. Peer in the same run: the same reservation PUT, signed, by the benchmark
   straight to that node (no allocator, no enforcer), so the ratio is what the socket, the
   signed forward, the allocator's store and plan and the push add.
Run (as root): .venv/bin/python bench/allocator_bench.py
"""

from __future__ import annotations

import json
import random
import re
import shutil
import socket
import statistics
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from common import percentile
from fleet import signed_put, start_enforcer, start_nodes

from allocator.fairshare import prioritize
from allocator.placement import Gpu, Held, Want, first_fit_now, plan
from gpuacct.config import PrioritySettings
from gpuacct.policy import NodePolicy, Reservations, ReservedGpu
from stack.process import ManagedProcess, free_port

NOW = 1_800_000_000.0
KEY, TOKEN = "bench-node-key", "bench-token"
NODES, ROUNDS = 10, 40


def placement_case(seed: int = 1) -> tuple[list[Gpu], list[Held], list[Want]]:
    rng = random.Random(seed)
    gpus = [Gpu(f"n{n:03d}", i, "NVIDIA A100" if n % 2 else "NVIDIA H100")
            for n in range(100) for i in range(8)]
    held = [Held(g.node, (g.index,), NOW + rng.randint(1, 48) * 600) for g in gpus]
    wants = [Want(id, f"u{id % 40}", rng.choice((1, 1, 2, 2, 4, 8)),
                  rng.choice((0.5, 1, 2, 4, 8, 24)) * 3600,
                  model=rng.choice((None, None, None, "A100"))) for id in range(1, 1001)]
    return gpus, held, wants


def timed(fn: object, *args: object, repeat: int = 5) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn(*args)  # type: ignore[operator]
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def bench_placement() -> None:
    gpus, held, wants = placement_case()
    ours, slots = timed(plan, gpus, held, wants, NOW)
    naive, granted = timed(first_fit_now, gpus, held, wants, NOW)
    assert isinstance(slots, dict) and isinstance(granted, dict)
    waits = sorted(s.start - NOW for s in slots.values())
    print("placement: 1,000 queued requests over 100 nodes x 8 GPUs, all GPUs held")
    print(f"  planned (first fit, conservative backfill):       {ours * 1000:8.1f} ms a decision,"
          f" {ours / len(wants) * 1e6:6.1f} us a request; {len(slots)} slots, estimated wait "
          f"median {statistics.median(waits) / 3600:.1f} h, max {waits[-1] / 3600:.1f} h")
    print(f"  naive first fit on free GPUs:                     {naive * 1000:8.1f} ms a decision,"
          f" {naive / len(wants) * 1e6:6.1f} us a request; {len(granted)} granted, "
          f"no estimate for the other {len(wants) - len(granted)}")
    print(f"  ratio planned / naive: {ours / naive:.2f}x")
    # Half the cluster free: most requests are granted at once.
    free = held[::2]
    ours, slots = timed(plan, gpus, free, wants, NOW)
    naive, granted = timed(first_fit_now, gpus, free, wants, NOW)
    assert isinstance(slots, dict) and isinstance(granted, dict)
    now_slots = sum(1 for s in slots.values() if s.start <= NOW)
    print("placement: the same, half the GPUs free")
    print(f"  planned: {ours * 1000:8.1f} ms a decision ({now_slots} granted now); naive: "
          f"{naive * 1000:6.1f} ms ({len(granted)} granted); ratio {ours / naive:.2f}x")
    # The queue's order before a pass: fair share over 40 users' decayed usage, and age.
    rng = random.Random(2)
    usage = {f"u{n}": rng.uniform(0, 1000) for n in range(40)}
    queued = [Queued(w.id, w.user, NOW - rng.uniform(0, 86400)) for w in wants]
    ordering, _ = timed(prioritize, queued, NOW, usage, lambda u: u, PrioritySettings())
    print(f"priority order (age and fair share) of the 1,000: {ordering * 1000:.1f} ms, "
          f"{ordering / ours:.0%} of a full-cluster pass")


@dataclass(frozen=True)
class Queued:
    id: int
    user: str
    submitted: float


def start_stack(work: Path) -> tuple[ManagedProcess, list[tuple[ManagedProcess, int]]]:
    enforcer_port = free_port()
    nodes = start_nodes(work, NODES, KEY, gpus_per_node=8,
                        enforcer_url=f"http://127.0.0.1:{enforcer_port}",
                        pull_interval_seconds=60, user_socket=lambda d: str(d / "user.sock"))
    enforcer, _ = start_enforcer(work, [p for _, p, _ in nodes], KEY, TOKEN, enforcer_port)
    return enforcer, [(proc, port) for proc, port, _ in nodes]


def ask(path: Path, request: dict[str, object]) -> dict[str, object]:
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(path))
        s.sendall(json.dumps(request).encode() + b"\n")
        reply: dict[str, object] = json.loads(s.makefile().readline())
        return reply


def reserved_on(port: int, marker: str) -> bool:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return marker in r.read().decode()


def wait(check: object, timeout: float = 10.0) -> float:
    start = time.perf_counter()
    while not check():  # type: ignore[operator]
        if time.perf_counter() - start > timeout:
            raise RuntimeError("not within the timeout")
        time.sleep(0.002)
    return time.perf_counter() - start


def put_policy(port: int, index: int, policy: NodePolicy) -> None:
    body = policy.model_dump_json().encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/policy", data=body,
                                     method="PUT", headers={"Content-Type": "application/json",
                                                            **signed_put(KEY, index, body)})
    urllib.request.urlopen(request, timeout=5).read()


def bench_reserve_to_node() -> None:
    work = Path(tempfile.mkdtemp(prefix="gpuacct-allocator-bench-"))
    enforcer, nodes = start_stack(work)
    ports = {f"node{i}": port for i, (_, port) in enumerate(nodes)}
    socket_path = work / "node0" / "user.sock"
    try:
        wait(lambda: "granted" in str(ask(socket_path, {"op": "queue"})) or True)
        time.sleep(1.0)  # every node has reported its GPUs on its first pull
        ours, direct = [], []
        version = 10**15  # the direct pushes' own versions, above the enforcer's
        for _ in range(ROUNDS):
            start = time.perf_counter()
            reply = ask(socket_path, {"op": "reserve", "count": 1, "seconds": 3600})
            answer = reply.get("answer")
            assert isinstance(answer, dict), reply
            found = re.search(r"reservation (\d+), GPU (\d+) on (\S+)", str(answer["text"]))
            assert found, answer
            id, gpu, node = found.groups()
            marker = f'gpuacct_gpu_reserved{{gpu="{gpu}",user="root"}} 1.0'
            wait(lambda: reserved_on(ports[node], marker))  # noqa: B023
            ours.append(time.perf_counter() - start)
            ask(socket_path, {"op": "release", "id": int(id)})
            wait(lambda: not reserved_on(ports[node], marker))  # noqa: B023
        for i in range(ROUNDS):
            node = f"node{i % NODES}"
            version += 2
            reserved = Reservations(nodes={node: (ReservedGpu(gpu=3, user="root", id=i + 1,
                                                              ends=time.time() + 3600),)})
            marker = 'gpuacct_gpu_reserved{gpu="3",user="root"} 1.0'
            start = time.perf_counter()
            put_policy(ports[node], int(node.removeprefix("node")),
                       NodePolicy(version=version, reservations=reserved))
            wait(lambda: reserved_on(ports[node], marker))  # noqa: B023
            direct.append(time.perf_counter() - start)
            put_policy(ports[node], int(node.removeprefix("node")),
                       NodePolicy(version=version + 1))
        for name, values in (("gpuacct reserve -> node", ours), ("direct signed PUT", direct)):
            values.sort()
            p99 = percentile(values, 99)
            print(f"  {name:<24} p50 {statistics.median(values) * 1000:6.1f} ms, "
                  f"p99 {p99 * 1000:6.1f} ms ({len(values)} rounds)")
        print(f"  ratio of medians: {statistics.median(ours) / statistics.median(direct):.1f}x")
    finally:
        enforcer.stop()
        for proc, _ in nodes:
            proc.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    bench_placement()
    print(f"reserve to enforced, {NODES} nodes of 8 GPUs on loopback:")
    bench_reserve_to_node()
