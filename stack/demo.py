"""`gpuacct-stack --demo`: the end-to-end story, played on simulated GPUs for a person to watch.

Two demo users, made for the demo and removed after it, run light "training" processes that
the exporter's demo backend places on simulated GPUs. Time is compressed through configuration
only, as in the end-to-end test: windows of seconds, high prices, every duration in the rules
and Alertmanager's config divided by FACTOR. Within about two minutes alice is warned,
blocked and throttled, a GPU process she starts is stopped, her running one is killed; the
demo then recharges her and everything lifts. Bob, on a cheap GPU, is never touched. Then the
queue: bob reserves his GPU, alice queues for one like it, bob's run ends and he releases it,
and alice is granted it at once. Their asks go over the node's user socket as themselves.
"""

from __future__ import annotations

import json
import pwd
import subprocess
import threading
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

from exporter.devices.demo import DEMO_ENV
from exporter.enforce.hookfile import read_hook
from ledger import Ledger

FACTOR = 60  # 10m -> 10 s in the rules; Alertmanager's group_wait 5s -> 83 ms
ALICE, BOB = "gpuacct-demo-alice", "gpuacct-demo-bob"
RECHARGE = Decimal(100)
# A light loop: the demo is about GPUs, and should not load the machine.
TRAIN = "import time\nwhile True:\n    sum(range(20000))\n    time.sleep(0.02)\n"
# What `gpuacct` does, in a line: one ask over the node's socket, run as the demo user.
ASK = ("import socket, sys; s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); "
       "s.sendall(sys.argv[2].encode() + b'\\n'); print(s.makefile().readline())")


def overrides(scrape_seconds: float) -> dict[str, dict[str, Any]]:
    """Config for the demo's parts on top of the operator's: quick windows, dear GPUs."""
    return {
        # The demo meters, bills and acts on its own users only: never on another local
        # user's work, whatever it is or its environment says.
        "exporter": {"interval_seconds": scrape_seconds, "only_users": [ALICE, BOB],
                     "nvml": {"backend": "demo", "demo_users": [ALICE, BOB]},
                     "actuator": {"kill_grace_seconds": 3}},
        "billing": {"window_seconds": 5, "settle_seconds": 2.5, "opening_balance": "30",
                    "thresholds": {"warning": "20", "limited": "10", "exhausted": "0"},
                    "prices": [{"gpu": [{"pattern": "A100", "per_minute": "30"},
                                        {"pattern": "RTX 3090", "per_minute": "0.30"}],
                                "cpu_per_core_minute": "0.01"}]},
    }


class Story(threading.Thread):
    """Plays the story once, printing each step; `stop()` ends its processes and users."""

    def __init__(self, ledger: Path, hook_dir: Path, user_socket: Path | None,
                 say: Callable[[str], None]) -> None:
        super().__init__(name="demo-story", daemon=True)
        self.ledger, self.hook_dir, self.say = ledger, hook_dir, say
        self.user_socket = user_socket
        self.stopping = threading.Event()
        self.procs: list[subprocess.Popen[bytes]] = []
        self.created: list[str] = []

    # -- the demo's users and processes ---------------------------------------------------------
    def _user(self, name: str) -> pwd.struct_passwd:
        try:
            return pwd.getpwnam(name)
        except KeyError:
            subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin",
                            "--comment", "gpuacct demo user", name],
                           check=True, capture_output=True)
            self.created.append(name)
            return pwd.getpwnam(name)

    def _train(self, user: str, gpu: int, job: str) -> subprocess.Popen[bytes]:
        entry = self._user(user)
        proc = subprocess.Popen(
            ["/usr/bin/python3", "-c", TRAIN], user=entry.pw_uid, group=entry.pw_gid,
            extra_groups=[], cwd="/", start_new_session=True, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env={"PATH": "/usr/bin:/bin", DEMO_ENV: str(gpu), "GPUACCT_JOB": job})
        self.procs.append(proc)
        return proc

    def _until(self, check: Callable[[], Any]) -> bool:
        """Wait for `check()`; False if the demo is being stopped."""
        while not self.stopping.is_set():
            if check():
                return True
            self.stopping.wait(0.5)
        return False

    def _ask(self, user: str, request: dict[str, Any]) -> dict[str, Any]:
        """The node daemon's answer to `user`'s ask, or RuntimeError with its refusal."""
        entry = self._user(user)
        done = subprocess.run(["/usr/bin/python3", "-c", ASK, str(self.user_socket),
                               json.dumps(request)], user=entry.pw_uid, group=entry.pw_gid,
                              extra_groups=[], cwd="/", env={"PATH": "/usr/bin:/bin"},
                              capture_output=True, text=True, timeout=30, check=False)
        try:
            reply: dict[str, Any] = json.loads(done.stdout)
        except ValueError:
            raise RuntimeError(done.stderr.strip() or "no answer from the node") from None
        if "answer" not in reply:
            raise RuntimeError(reply.get("detail", "no answer"))
        answer: dict[str, Any] = reply["answer"]
        return answer

    def _holds(self, user: str) -> bool:
        summary = self._ask(user, {"op": "reservations"})["summary"]
        return any(e["state"] == "granted" for e in summary["entries"])

    def _hook(self) -> dict[str, Any]:
        hook = read_hook(self.hook_dir, ALICE)
        return hook.model_dump(mode="json") if hook else {}

    # -- the story -------------------------------------------------------------------------------
    def run(self) -> None:
        try:
            self._play()
        except Exception as exc:  # a demo that fails says so and leaves the stack running
            self.say(f"the demo story stopped: {exc}")

    def _play(self) -> None:
        bob = self._train(BOB, 1, "bob-finetune")
        first = self._train(ALICE, 0, "alice-pretrain")
        self.say(f"{ALICE} trains on simulated GPU 0 (an A100 at 30.00 a GPU-minute), "
                 f"{BOB} on simulated GPU 1 (an RTX 3090 at 0.30); both start with 30.00")
        if not self._until(lambda: any(r["alert"] == "GpuacctBalanceLow"
                                       for r in self._hook().get("reasons", []))):
            return
        self.say(f"{ALICE} is below the warning threshold (20): she is notified")
        if not self._until(lambda: self._hook().get("block")):
            return
        self.say(f"{ALICE} is below limited (10): new GPU work blocked, CPU limited to 50%")
        second = self._train(ALICE, 0, "alice-another-run")
        if self._until(lambda: second.poll() is not None):
            self.say(f"{ALICE} started another GPU process: it was stopped, the first one runs on")
        if not self._until(lambda: first.poll() is not None):
            return
        self.say(f"{ALICE} stayed below 0 for 10 (compressed) minutes: her GPU job was killed")
        if self.stopping.wait(15):
            return
        ledger = Ledger(self.ledger)
        try:
            balance = ledger.post(ALICE, "recharge", RECHARGE, time.time(),
                                  f"demo-recharge:{time.time()}", "gpuacct demo")
        finally:
            ledger.close()
        self.say(f"the demo recharges {ALICE} by {RECHARGE}: her balance is {balance}")
        if not self._until(lambda: not self._hook()):
            return
        self._train(ALICE, 0, "alice-pretrain-resumed")
        bob_state = "is still training" if bob.poll() is None else "is no longer training"
        self.say(f"the alerts resolved and every restriction lifted: {ALICE} trains again; "
                 f"{BOB} {bob_state}")
        if self.user_socket is not None:
            self._queue(bob)

    def _queue(self, bob: subprocess.Popen[bytes]) -> None:
        """Bob reserves his GPU, alice queues for one like it and is granted it when he
        releases it."""
        granted = self._ask(BOB, {"op": "reserve", "count": 1, "seconds": 3600, "gpus": [1]})
        self.say(f"{BOB} reserves the RTX 3090 he trains on for an hour: "
                 f"{granted['text'].splitlines()[0]}")
        queued = self._ask(ALICE, {"op": "reserve", "count": 1, "seconds": 1800,
                                   "model": "RTX 3090"})
        self.say(f"{ALICE} asks for an RTX 3090 for 30 minutes: {queued['text']}")
        bob.kill()
        bob.wait()
        released = self._ask(BOB, {"op": "release"})
        self.say(f"{BOB}'s run is over and he releases the GPU: {released['text']}")
        if self._until(lambda: self._holds(ALICE)):
            self.say(f"{ALICE} is granted it at once, and told on her terminals")

    def stop(self) -> None:
        self.stopping.set()
        self.join(timeout=5)
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        for name in self.created:
            subprocess.run(["userdel", name], check=False, capture_output=True)
