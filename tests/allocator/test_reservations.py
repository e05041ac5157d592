"""GPU reservations end to end: the control plane (gpuacct-enforcer with its allocator) and two
nodes (gpuacct-exporter on fake NVML, real processes of real test users). Users ask with the
installed `gpuacct` command over each node's Unix socket; who they are is what the kernel says.

One story: alice reserves two GPUs; bob's process on one of them is told and stopped after the
grace while alice's runs; bob's process on an unreserved GPU is left alone in open mode. The
cluster full, dave and erin queue; the control plane is SIGKILLed and comes back in strict
mode with the queue intact, and bob's unreserved process is stopped; alice releases and dave
is granted within one push and told.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ledger import Ledger
from stack.process import free_port
from tests.allocator.test_fairshare import usage_at
from tests.fixtures.enforcement import TOKEN, Cluster, Enforcer, EnforcingNode, wait_until
from tests.fixtures.gpus import device
from tests.fixtures.users import Processes, UnixUser, wait_until_exec
from tests.web.conftest import Web, proxied
from tests.web.test_gpus_page import cells

pytestmark = [pytest.mark.integration, pytest.mark.root]

GRACE = 2.0  # seconds a process on someone else's GPU is given




def gpuacct(venv: Path, socket: Path, user: UnixUser, *args: str, expect: int = 0) -> str:
    """The installed `gpuacct` as a test user, on a node's socket: what it printed."""
    done = subprocess.run(
        [str(venv / "bin" / "gpuacct"), "--socket", str(socket), *args], user=user.uid,
        group=user.gid, extra_groups=[], cwd="/tmp", env={"PATH": "/usr/bin:/bin",
                                                          "HOME": "/tmp"},
        capture_output=True, text=True, timeout=30)
    assert done.returncode == expect, (done.stdout, done.stderr)
    return done.stdout if expect == 0 else done.stderr


class Rig:
    def __init__(self, cluster: Cluster, sockets: Path, venv: Path, **node: Any) -> None:
        self.cluster, self.sockets, self.venv = cluster, sockets, venv
        self.port = free_port()
        self.nodes = [cluster.node(name, enforcer_port=self.port, pull_seconds=1.0,
                                   devices=[device(0), device(1)],
                                   user_socket=str(sockets / f"{name}.sock"), **node)
                      for name in ("gpu01", "gpu02")]
        self.enforcer = self.start("open")

    def start(self, mode: str) -> Enforcer:
        enforcer = self.cluster.enforcer(self.nodes, self.port, allocator={
            "mode": mode, "grace_seconds": GRACE, "check_interval_seconds": 0.5})
        wait_until(lambda: self.enforcer_gpus(enforcer) == 4, 20)
        return enforcer

    @staticmethod
    def enforcer_gpus(enforcer: Enforcer) -> int:
        try:
            return int(enforcer.get("/v1/allocation")["gpus"])
        except OSError:
            return 0

    def gpuacct(self, user: UnixUser, *args: str, node: str = "gpu01",
                expect: int = 0) -> str:
        return gpuacct(self.venv, self.sockets / f"{node}.sock", user, *args, expect=expect)

    def on_gpu(self, processes: Processes, user: UnixUser, node: EnforcingNode,
               gpu: int) -> subprocess.Popen[bytes]:
        proc = processes.python(user, "train.py", "600")
        wait_until_exec(proc, "train.py")
        node.gpus.put(gpu, proc.pid)
        node.gpus.save()
        return proc

    def summary(self) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = self.enforcer.get("/v1/allocation")["entries"]
        return entries

    def reserved_metric(self, node: EnforcingNode) -> set[tuple[str, str]]:
        found = set()
        for line in node.exporter.scrape().splitlines():
            if line.startswith("gpuacct_gpu_reserved{"):
                labels = dict(part.split("=") for part in line[line.index("{") + 1:
                                                               line.index("}")].split(","))
                found.add((labels["gpu"].strip('"'), labels["user"].strip('"')))
        return found


def told(enforcer: Enforcer, user: str, node: str, text: str) -> bool:
    return any(e["node"] == node and e["action"] == "notify" and e["alert"] == "reservation"
               and text in e["detail"] for e in enforcer.audit(user))


def test_reserve_enforce_queue_restart_release(
        cluster: Cluster, shared_dir: Path, installed_gpuacct: Path, processes: Processes,
        test_users: dict[str, UnixUser]) -> None:
    rig = Rig(cluster, shared_dir, installed_gpuacct)
    gpu01, gpu02 = rig.nodes
    alice, bob, carol, dave, erin = (test_users[n] for n in
                                     ("alice", "bob", "carol", "dave", "erin"))

    # alice reserves two GPUs and gets specific indices.
    out = rig.gpuacct(alice, "reserve", "2", "--for", "1h", "--node", "gpu01")
    assert out.startswith("granted: reservation 1, GPU 0,1 on gpu01 until"), out
    assert "gpuacct run -- CMD" in out
    wait_until(lambda: rig.reserved_metric(gpu01) == {("0", alice.name), ("1", alice.name)})

    # bob's process on one of them is told, then stopped after the grace; alice's runs on.
    hers = rig.on_gpu(processes, alice, gpu01, 0)
    started = time.monotonic()
    his = rig.on_gpu(processes, bob, gpu01, 1)
    wait_until(lambda: told(rig.enforcer, bob.name, "gpu01", f"reserved by {alice.name}"), 10)
    wait_until(lambda: his.poll() is not None, 15)
    assert time.monotonic() - started >= GRACE
    assert his.returncode == 0 and hers.poll() is None  # SIGTERM: train.py exits 0 on it
    gpu01.gpus.remove(his.pid)
    gpu01.gpus.save()

    # bob's process on an unreserved GPU of gpu02 is untouched in open mode.
    unreserved = rig.on_gpu(processes, bob, gpu02, 0)
    time.sleep(2 * GRACE + 1)
    assert unreserved.poll() is None

    # Each user sees only their own; nobody releases another's.
    assert "gpu01" in rig.gpuacct(alice, "reservations") and \
        rig.gpuacct(bob, "reservations").strip() == "your reservations: none"
    err = rig.gpuacct(bob, "release", "1", expect=2)
    assert err.strip() == "gpuacct: you have no reservation or queued request 1"

    # The cluster full (carol takes gpu02's GPU 1), dave and erin queue.
    assert rig.gpuacct(carol, "reserve", "1", "--for", "2h", "--node", "gpu02", "--gpus", "1",
                       node="gpu02").startswith("granted: reservation 2, GPU 1 on gpu02")
    out = rig.gpuacct(dave, "reserve", "2", "--for", "30m")
    assert out.startswith("queued: request 3, position 1, estimated start"), out
    out = rig.gpuacct(erin, "reserve", "2", "--for", "30m", node="gpu02")
    assert out.startswith("queued: request 4, position 2, estimated start"), out
    [d, e] = [x for x in rig.summary() if x["state"] == "queued"]
    assert e["estimated_start"] - d["estimated_start"] == pytest.approx(1800, abs=5)
    queue = rig.gpuacct(erin, "queue", node="gpu02")
    assert all(name in queue for name in (alice.name, carol.name, dave.name, erin.name))

    # The control plane dies (SIGKILL) and comes back in strict mode: nothing is lost, and
    # bob's process on a GPU he has not reserved is now stopped.
    before = [(e["id"], e["user"], e["state"], e["position"]) for e in rig.summary()]
    os.killpg(rig.enforcer.process.pid, signal.SIGKILL)
    assert rig.enforcer.process.popen is not None
    rig.enforcer.process.popen.wait()
    rig.enforcer = rig.start("strict")
    assert [(e["id"], e["user"], e["state"], e["position"]) for e in rig.summary()] == before
    wait_until(lambda: unreserved.poll() is not None, 15)
    assert told(rig.enforcer, bob.name, "gpu02", "needs a reservation")
    assert hers.poll() is None  # alice's is on her own reservation

    # alice releases; dave is granted within one push, and told on his terminals.
    released = time.monotonic()
    assert rig.gpuacct(alice, "release").startswith("released: reservation 1")
    took = wait_until(lambda: ("0", dave.name) in rig.reserved_metric(gpu01), 5)
    assert took < 1.0, f"the grant reached the node after {took:.2f}s"
    wait_until(lambda: told(rig.enforcer, dave.name, "gpu01", "is granted"), 10)
    assert [(e["user"], e["position"]) for e in rig.summary() if e["state"] == "queued"] == [
        (erin.name, 1)]
    assert time.monotonic() - released < 10
    # alice's process is on dave's GPU now: it is stopped after the grace.
    wait_until(lambda: hers.poll() is not None, 15)
    events = [(e["event"], e["actor"]) for e in rig.enforcer.get("/v1/allocation/audit")]
    assert ("released", alice.name) in events and ("granted", "allocator") in events

    # A node that was away converges within one pull period: gpu02 is down while carol's
    # reservation on it is cancelled; back, it drops the reservation at its first pull.
    gpu02.exporter.process.stop()
    cancel = urllib.request.Request(
        f"{rig.enforcer.url}/v1/allocation/cancel", data=json.dumps(
            {"id": 2, "admin": "ann", "reason": "maintenance"}).encode(),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(cancel, timeout=10) as answer:
        assert "cancelled: reservation 2" in json.load(answer)["text"]
    gpu02.exporter.restart()
    took = wait_until(lambda: ("1", carol.name) not in rig.reserved_metric(gpu02), 10)
    assert took <= 1.5, f"gpu02 converged {took:.2f}s after it came back"
    assert ("cancelled", "ann") in [(e["event"], e["actor"])
                                    for e in rig.enforcer.get("/v1/allocation/audit")]


def known_on(rig: Rig, asker: UnixUser, node: str, user: UnixUser) -> set[str]:
    """The GPUs of the node the allocator knows the user works on (from the node's reports:
    the exporter sees a process a report before the allocator does)."""
    return {str(g["index"]) for g in json.loads(rig.gpuacct(asker, "gpus", "--json"))
            if g["node"] == node and user.name in g["users"]}


def test_a_reservation_never_takes_a_gpu_someone_works_on(
        cluster: Cluster, shared_dir: Path, installed_gpuacct: Path, processes: Processes,
        test_users: dict[str, UnixUser], start_web: Callable[..., Web]) -> None:
    """open mode: bob trains unreserved on GPU 0 of gpu01, so alice's reservation gets GPU 1.
    With bob on both GPUs of gpu02, carol's request waits, saying whose work it waits for,
    and bob is never signalled; when one of his processes ends, carol gets that GPU."""
    rig = Rig(cluster, shared_dir, installed_gpuacct)
    gpu01, gpu02 = rig.nodes
    alice, bob, carol = (test_users[n] for n in ("alice", "bob", "carol"))
    first = rig.on_gpu(processes, bob, gpu01, 0)
    wait_until(lambda: known_on(rig, alice, "gpu01", bob) == {"0"})
    out = rig.gpuacct(alice, "reserve", "1", "--for", "1h", "--node", "gpu01", "--dry-run")
    assert out.strip() == "would be granted now: GPU 1 on gpu01 (nothing was reserved: --dry-run)"
    assert rig.summary() == []
    out = rig.gpuacct(alice, "reserve", "1", "--for", "1h", "--node", "gpu01")
    assert out.startswith("granted: reservation 1, GPU 1 on gpu01 until"), out

    # Anyone sees what is free: gpu01's GPUs are taken (bob works on 0, alice reserved 1).
    table = rig.gpuacct(carol, "gpus").splitlines()
    assert table[0].split()[:4] == ["NODE", "GPU", "MODEL", "MEMORY"]
    rows = {tuple(line.split()[:2]): line for line in table[1:-1]}
    assert bob.name in rows[("gpu01", "0")] and rows[("gpu01", "0")].endswith("no")
    assert f"{alice.name} until" in rows[("gpu01", "1")] and rows[("gpu01", "1")].endswith("no")
    assert rows[("gpu02", "0")].endswith("yes") and table[-1] == "2 of 4 GPUs free now"
    free = json.loads(rig.gpuacct(carol, "gpus", "--free", "--json"))
    assert [(g["node"], g["index"], g["free"]) for g in free] == [("gpu02", 0, True),
                                                                  ("gpu02", 1, True)]
    assert free[0]["memory_total_bytes"] == 80 << 30 and free[0]["users"] == []
    assert rig.gpuacct(carol, "gpus", "--model", "H100") == "no GPU matches\n"
    err = rig.gpuacct(carol, "gpus", "--model", "(", expect=2)
    assert err.startswith("gpuacct: --model '(': not a regular expression"), err
    # The web's GPUs page lists what the command lists.
    web = start_web(enforcer_url=rig.enforcer.url, auth={"webhook_token": TOKEN})
    listed = json.loads(rig.gpuacct(carol, "gpus", "--json"))
    page = proxied(carol.name).get(f"{web.url}/gpus", timeout=10).text
    assert [(r[0], r[1], r[2], r[5], r[6].split(" until")[0], r[7]) for r in cells(page)] == [
        (g["node"], str(g["index"]), g["model"], ", ".join(g["users"]) or "—",
         g["reserved_by"] or "—", "yes" if g["free"] else "no") for g in listed]

    second, third = rig.on_gpu(processes, bob, gpu02, 0), rig.on_gpu(processes, bob, gpu02, 1)
    wait_until(lambda: known_on(rig, carol, "gpu02", bob) == {"0", "1"})
    out = rig.gpuacct(carol, "reserve", "1", "--for", "1h", "--node", "gpu02", "--dry-run")
    assert out.strip() == (
        f"would queue at position 1, no estimated start: it waits for GPUs in use (GPU 0 on "
        f"gpu02, GPU 1 on gpu02 by {bob.name}), whose work has no known end"), out
    out = rig.gpuacct(carol, "reserve", "1", "--for", "1h", "--node", "gpu02", node="gpu02")
    assert out.strip() == (
        f"queued: request 2, position 1, no estimated start: it waits for GPUs in use (GPU 0 "
        f"on gpu02, GPU 1 on gpu02 by {bob.name}), whose work has no known end"), out
    time.sleep(2 * GRACE + 1)
    assert all(p.poll() is None for p in (first, second, third))  # never signalled
    assert not any(e["user"] == bob.name for e in rig.enforcer.audit(bob.name)
                   if e["action"] in ("kill", "stop"))

    # One of bob's processes ends: its GPU goes to carol at gpu02's next report.
    third.terminate()
    third.wait(10)
    gpu02.gpus.remove(third.pid)
    gpu02.gpus.save()
    wait_until(lambda: ("1", carol.name) in rig.reserved_metric(gpu02), 10)
    assert first.poll() is None and second.poll() is None

    # An administrator preempts bob's work on gpu01's GPU 0 for carol, on purpose: audited,
    # bob told, then stopped after the grace.
    started = time.monotonic()
    preempted = subprocess.run(
        [sys.executable, "-m", "enforcer", "--config", str(rig.enforcer.config), "preempt",
         carol.name, "1", "--for", "30m", "--node", "gpu01", "--gpus", "0", "--reason",
         "paper deadline", "--admin", "ann", "--url", rig.enforcer.url],
        capture_output=True, text=True, timeout=60)
    assert preempted.returncode == 0, preempted.stderr
    assert preempted.stdout.startswith("granted: reservation 3, GPU 0 on gpu01"), preempted
    wait_until(lambda: told(rig.enforcer, bob.name, "gpu01", f"reserved by {carol.name}"), 10)
    wait_until(lambda: first.poll() is not None, 15)
    assert time.monotonic() - started >= GRACE and second.poll() is None
    assert ("queued to preempt", "ann", "1 GPU for 30m, node gpu01, GPUs 0: paper deadline") in [
        (e["event"], e["actor"], e["detail"]) for e in rig.enforcer.get("/v1/allocation/audit")]


def test_the_queue_is_ordered_by_fair_share_from_the_ledger(
        cluster: Cluster, shared_dir: Path, installed_gpuacct: Path, tmp_path: Path,
        test_users: dict[str, UnixUser]) -> None:
    """alice used much (the ledger says so), carol nothing: carol, asking after alice, is
    first, and `gpuacct queue --explain` says why."""
    alice, bob, carol = (test_users[n] for n in ("alice", "bob", "carol"))
    ledger = tmp_path / "ledger.sqlite3"
    Ledger(ledger).close()
    usage_at(ledger, alice.name, time.time() - 3600, "100")
    port = free_port()
    node = cluster.node("gpu01", enforcer_port=port, pull_seconds=1.0, devices=[device(0)],
                        user_socket=str(shared_dir / "gpu01.sock"))
    cluster.enforcer([node], port, sections={"billing": {"ledger": str(ledger)}})
    socket = shared_dir / "gpu01.sock"
    wait_until(socket.exists, 20)

    def ask(user: UnixUser, *args: str) -> str:
        return gpuacct(installed_gpuacct, socket, user, *args)

    assert ask(bob, "reserve", "1", "--for", "1h").startswith("granted")
    assert "position 1" in ask(alice, "reserve", "1", "--for", "1h")
    assert "position 1" in ask(carol, "reserve", "1", "--for", "1h")  # ahead of her
    lines = ask(carol, "queue", "--explain").splitlines()
    assert [line.split()[2] for line in lines[1:3]] == [carol.name, alice.name]
    assert lines[1].split()[6:] == ["1.000", "0.0%", "50.0%"]
    assert lines[2].split()[6:] == ["0.250", "100.0%", "50.0%"]
    assert lines[3].startswith("priority = age weight x AGE + fair-share weight x FAIRSHARE")


def test_a_waiting_run_starts_when_its_turn_comes_and_ends_with_its_command(
        cluster: Cluster, shared_dir: Path, installed_gpuacct: Path, processes: Processes,
        test_users: dict[str, UnixUser]) -> None:
    """bob's `gpuacct run --gpus 1` waits behind alice's reservation of gpu01, starts its
    command within a second of her release, on the GPU it was granted, passes its exit
    status through and ends the reservation with it; carol's waiting run, killed, withdraws
    her request."""
    rig = Rig(cluster, shared_dir, installed_gpuacct)
    alice, bob, carol = (test_users[n] for n in ("alice", "bob", "carol"))
    assert rig.gpuacct(alice, "reserve", "2", "--for", "1h", "--node", "gpu01").startswith(
        "granted: reservation 1")
    out = shared_dir / "bob-started"
    out.touch()
    os.chown(out, bob.uid, bob.gid)
    script = ("import os, sys, time; open(sys.argv[1], 'w').write(f'{time.time()} "
              "{os.environ[\"CUDA_VISIBLE_DEVICES\"]}'); sys.exit(3)")
    waiting = processes.run(bob, [str(installed_gpuacct / "bin" / "gpuacct"), "--socket",
                                  str(shared_dir / "gpu01.sock"), "run", "--gpus", "1", "--for",
                                  "30m", "--", "/usr/bin/python3", "-c", script, str(out)])
    wait_until(lambda: [(e["user"], e["state"]) for e in rig.summary()][1:] == [
        (bob.name, "queued")], 15)
    time.sleep(1)  # it is waiting, polling
    released = time.time()
    assert rig.gpuacct(alice, "release").startswith("released: reservation 1")
    assert waiting.wait(15) == 3  # the command's own exit status
    started, gpus = out.read_text().split()
    assert float(started) - released < 1.0, f"started {float(started) - released:.2f}s late"
    assert gpus in ("0", "1")
    wait_until(lambda: rig.summary() == [], 10)  # the reservation ended with the command
    events = [(e["user"], e["event"]) for e in rig.enforcer.get("/v1/allocation/audit")]
    assert (bob.name, "granted") in events and (bob.name, "released") in events

    # A waiting run that is killed takes its request with it.
    rig.gpuacct(alice, "reserve", "2", "--for", "1h", "--node", "gpu01")
    hers = processes.run(carol, [str(installed_gpuacct / "bin" / "gpuacct"), "--socket",
                                 str(shared_dir / "gpu01.sock"), "run", "--gpus", "1", "--for",
                                 "30m", "--", "/bin/true"])
    wait_until(lambda: (carol.name, "queued") in [(e["user"], e["state"])
                                                  for e in rig.summary()], 15)
    os.killpg(hers.pid, signal.SIGKILL)
    hers.wait()
    wait_until(lambda: carol.name not in [e["user"] for e in rig.summary()], 10)
    assert (carol.name, "withdrawn", carol.name) in [
        (e["user"], e["event"], e["actor"]) for e in rig.enforcer.get("/v1/allocation/audit")]


BAD_INPUT = [
    (["reserve", "9", "--for", "1h"], "9 GPUs asked for, but at most 2 match on any one node"),
    (["reserve", "1", "--for", "1h", "--model", "H100"], "no GPU matches the model 'H100'"),
    (["reserve", "1", "--for", "1h", "--node", "gpu99"], "no node is called 'gpu99'"),
    (["reserve", "1", "--for", "0m"], "a reservation lasts longer than nothing"),
    (["reserve", "1", "--for", "-1h"], "expected one argument"),
    (["reserve", "1", "--for", "9999d"], "at most 366d"),
    (["reserve", "1", "--for", "soon"], "expected a duration such as 30m"),
    (["reserve", "0", "--for", "1h"], "expected a number of GPUs from 1"),
    (["reserve", "-3", "--for", "1h"], "expected a number of GPUs from 1"),
    (["reserve", "2", "--for", "1h", "--gpus", "0,,1"], "expected GPU indices such as 0,1"),
    (["reserve", "2", "--for", "1h", "--gpus", "0,0"], "a GPU is named twice"),
    (["reserve", "1", "--for", "1h", "--gpus", "0,1"], "2 GPUs named but 1 asked for"),
    (["reserve", "1", "--for", "1h", "--gpus", "7"], "gpu01 has no GPU 7"),
    (["reserve", "1", "--for", "1h", "--model", "("], "not a regular expression"),
    (["release", "x"], "expected a request id"),
    (["run"], "give the command after --"),
    (["run", "--", "python3"], "you hold no reservation on gpu01"),
]


def test_bad_input_is_one_line_and_exit_2_and_queues_nothing(
        cluster: Cluster, shared_dir: Path, installed_gpuacct: Path,
        test_users: dict[str, UnixUser]) -> None:
    rig = Rig(cluster, shared_dir, installed_gpuacct)
    for args, message in BAD_INPUT:
        err = rig.gpuacct(test_users["alice"], *args, expect=2)
        assert len(err.strip().splitlines()) == 1 and message in err, (args, err)
    assert rig.summary() == []
    assert rig.enforcer.get("/v1/allocation/audit") == []


def test_identity_comes_from_the_kernel_and_the_node_key(
        cluster: Cluster, shared_dir: Path, installed_gpuacct: Path,
        test_users: dict[str, UnixUser]) -> None:
    rig = Rig(cluster, shared_dir, installed_gpuacct)
    alice = test_users["alice"]
    # A request to the control plane without the node's signature changes nothing.
    body = json.dumps({"caller": {"node": "gpu01", "uid": alice.uid, "user": alice.name},
                       "ask": {"op": "reserve", "count": 1, "seconds": 60}}).encode()
    unsigned = urllib.request.Request(f"{rig.enforcer.url}/v1/allocation", data=body,
                                      headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(unsigned, timeout=10)
    assert refused.value.code == 401
    # Claiming to be someone else over the socket is not a field the daemon takes.
    script = ("import json, socket, sys; s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]);"
              "s.sendall(json.dumps({'op': 'reserve', 'count': 1, 'seconds': 60, "
              "'user': 'root'}).encode() + b'\\n'); print(s.makefile().readline())")
    done = subprocess.run(["/usr/bin/python3", "-c", script, str(shared_dir / "gpu01.sock")],
                          user=alice.uid, group=alice.gid, extra_groups=[], cwd="/tmp",
                          capture_output=True, text=True, timeout=30)
    reply = json.loads(done.stdout)
    assert reply["kind"] == "refused" and "user: unknown key" in reply["detail"]
    assert rig.summary() == []
    # What is reserved is the caller's, as the kernel named them.
    rig.gpuacct(alice, "reserve", "1", "--for", "10m")
    assert [e["user"] for e in rig.summary()] == [alice.name]


def test_a_reservation_held_idle_is_released_by_the_nodes_idle_action(
        cluster: Cluster, shared_dir: Path, installed_gpuacct: Path, processes: Processes,
        test_users: dict[str, UnixUser]) -> None:
    """exporter.idle.action release: a reservation whose holder keeps its GPU idle (here a
    process at 0%) ends that long after it became idle-held; the holder is told, the GPU goes
    to the one queued, and a reservation kept busy is left alone."""
    rig = Rig(cluster, shared_dir, installed_gpuacct,
              idle={"after_seconds": 1, "action": "release", "action_after_seconds": 2})
    gpu01, _ = rig.nodes
    alice, bob, carol = (test_users[n] for n in ("alice", "bob", "carol"))
    # A reserved GPU its holder does not keep busy is idle-held from its grant, before any
    # process: the release can come no sooner than idle after 1 s, then 2 s, from here.
    granted = time.monotonic()
    assert rig.gpuacct(alice, "reserve", "1", "--for", "1h", "--node", "gpu01", "--gpus",
                       "0").startswith("granted: reservation 1, GPU 0 on gpu01")
    assert rig.gpuacct(bob, "reserve", "1", "--for", "1h", "--node", "gpu01", "--gpus",
                       "1").startswith("granted: reservation 2, GPU 1 on gpu01")
    wait_until(lambda: len(rig.reserved_metric(gpu01)) == 2)
    idle = processes.python(alice, "train.py", "600")
    wait_until_exec(idle, "train.py")
    gpu01.gpus.put(0, idle.pid, sm_util=0)
    gpu01.gpus.save()
    rig.on_gpu(processes, bob, gpu01, 1)  # at 50%
    queued = rig.gpuacct(carol, "reserve", "1", "--for", "1h", "--node", "gpu01", "--gpus", "0")
    assert queued.startswith("queued: request 3"), queued

    wait_until(lambda: told(rig.enforcer, alice.name, "gpu01",
                            "was released: your processes held its GPUs idle"), 20)
    assert time.monotonic() - granted >= 1 + 2 - 0.5  # idle after 1 s, released 2 s later
    wait_until(lambda: rig.reserved_metric(gpu01) == {("0", carol.name), ("1", bob.name)}, 10)
    gpu01.gpus.remove(idle.pid)
    rig.on_gpu(processes, carol, gpu01, 0)  # she uses hers (else it too is released in 3 s)
    entries = {e["id"]: e for e in rig.summary()}
    assert 1 not in entries and entries[2]["state"] == entries[3]["state"] == "granted"
    assert any(e["action"] == "release" and e["alert"] == "idle" and e["node"] == "gpu01"
               for e in rig.enforcer.audit(alice.name))
