"""What a job is: framework, script, arguments with secrets redacted, directory and start, from
real processes of test users (the frameworks are not installed here: a process loads an empty
library named as the framework's, or runs a command line that names it)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from exporter.usage.metadata import (
    REDACTED,
    framework_from_argv,
    framework_from_maps,
    redact,
    script_and_args,
    shown,
)
from tests.exporter.conftest import Node
from tests.fixtures.gpus import FakeGpus, device
from tests.fixtures.servers import wait_for
from tests.fixtures.users import SCRIPTS, Processes, UnixUser, stand_in_library

Users = dict[str, UnixUser]


@pytest.mark.parametrize("args, expected", [
    (["--lr", "3e-4", "--token", "s3cret"], ["--lr", "3e-4", "--token", REDACTED]),
    (["--password=hunter2", "-v"], [f"--password={REDACTED}", "-v"]),
    (["--api-key", "k", "--db-passwd", "p"], ["--api-key", REDACTED, "--db-passwd", REDACTED]),
    (["WANDB_API_KEY=abc", "HF_TOKEN=x", "epochs=3"],
     [f"WANDB_API_KEY={REDACTED}", f"HF_TOKEN={REDACTED}", "epochs=3"]),
    (["--data", "s3://me:pw@bucket/x"], ["--data", f"s3://me:{REDACTED}@bucket/x"]),
    (["--token"], ["--token"]),  # nothing after it to hide
    (["--secret-file", "--verbose"], ["--secret-file", "--verbose"]),  # a flag, not a value
])
def test_secrets_are_redacted(args: list[str], expected: list[str]) -> None:
    assert redact(args) == expected


def test_arguments_are_one_bounded_printable_line() -> None:
    line = shown(["--note", "a\nb\x1b[31m", *["x" * 50] * 10])
    assert len(line) == 256 and line.endswith("…")
    assert "\n" not in line and "\x1b" not in line


@pytest.mark.parametrize("argv, script, args", [
    (["/usr/bin/python3", "-u", "train.py", "--lr", "3"], "train.py", ["--lr", "3"]),
    (["python", "-m", "pkg.main", "--x"], "-m pkg.main", ["--x"]),
    (["./a.out", "--steps", "9"], "./a.out", ["--steps", "9"]),
    ([], "", []),
])
def test_script_and_arguments(argv: list[str], script: str, args: list[str]) -> None:
    assert script_and_args(argv) == (script, args)


@pytest.mark.parametrize("argv, framework", [
    (["/usr/local/bin/torchrun", "--nproc-per-node", "8", "train.py"], "torch"),
    (["python3", "-m", "torch.distributed.run", "train.py"], "torch"),
    (["python3", "-m", "paddle.distributed.launch", "train.py"], "paddle"),
    (["msrun", "--worker_num", "8", "train.py"], "mindspore"),
    (["/usr/bin/python3", "/opt/bin/torchrun", "train.py"], "torch"),
    (["python3", "train.py", "--model", "torch"], ""),  # an argument is not the program
])
def test_framework_from_the_command_line(argv: list[str], framework: str) -> None:
    assert framework_from_argv(argv) == framework


@pytest.mark.parametrize("library, framework", [
    ("site-packages/torch/lib/libtorch_cuda.so", "torch"),
    ("site-packages/torch/lib/libc10.so", "torch"),
    ("site-packages/tensorflow/libtensorflow_framework.so.2", "tensorflow"),
    ("site-packages/jaxlib/xla_extension.so", "jax"),
    ("site-packages/mindspore/lib/libmindspore_backend.so", "mindspore"),
    ("site-packages/paddle/base/libpaddle.so", "paddle"),
    ("lib/x86_64-linux-gnu/libm.so.6", ""),
])
def test_framework_from_mapped_libraries(library: str, framework: str) -> None:
    maps = ("7f2a00000000-7f2a00021000 r--p 00000000 08:01 1234 /usr/lib/libc.so.6\n"
            f"7f2b00000000-7f2b00100000 r-xp 00000000 08:01 5678 /usr/{library}\n")
    assert framework_from_maps(maps) == framework


def _mapped(pid: int, name: str) -> bool:
    return name in Path(f"/proc/{pid}/maps").read_text()


@pytest.mark.root
def test_real_processes_are_named_with_framework_script_and_redacted_arguments(
        make_node: Callable[..., Node], processes: Processes, test_users: Users) -> None:
    alice, bob = test_users["alice"], test_users["bob"]
    torch = stand_in_library("libtorch_cuda.so")
    trainer = processes.python(alice, "train_model.py", str(torch), "--epochs", "3",
                               "--token", "s3cret", "WANDB_API_KEY=abc123",
                               env={"GPUACCT_JOB": "resnet"})
    wait_for(lambda: _mapped(trainer.pid, "libtorch_cuda.so"))
    # A launcher named as the framework's (as torchrun is), which loads nothing itself.
    launcher = SCRIPTS / "msrun"
    launcher.write_text("import time\nwhile True:\n    time.sleep(60)\n")
    launcher.chmod(0o644)
    ms = processes.run(bob, ["/usr/bin/python3", str(launcher), "--worker_num", "2",
                             "--password=hunter2"], env={"GPUACCT_JOB": "ms"})
    wait_for(lambda: str(launcher) in " ".join(psutil.Process(ms.pid).cmdline()))
    gpus = FakeGpus([device(0)])
    node = make_node(gpus)
    gpus.put(0, trainer.pid)
    node.cycle(2, pause=0.2)

    info = {(labels["user"], labels["job"]): labels
            for labels, _ in node.samples("gpuacct_job_info")}
    resnet = info[(alice.name, "resnet")]
    assert (resnet["framework"], resnet["name"], resnet["script"]) == (
        "torch", "train_model.py", str(SCRIPTS / "train_model.py"))
    assert resnet["args"] == (f"{torch} --epochs 3 --token {REDACTED} "
                              f"WANDB_API_KEY={REDACTED}")
    assert resnet["cwd"] == "/tmp"
    assert info[(bob.name, "ms")]["framework"] == "mindspore"
    assert info[(bob.name, "ms")]["args"] == f"--worker_num 2 --password={REDACTED}"
    exposition = "".join(str(s) for m in node.registry.collect() for s in m.samples)
    assert "s3cret" not in exposition and "abc123" not in exposition
    assert "hunter2" not in exposition

    started = node.present("gpuacct_job_start_time_seconds", user=alice.name, job="resnet")
    assert started == pytest.approx(psutil.Process(trainer.pid).create_time(), abs=1.5)
    assert started <= time.time()
