from __future__ import annotations

import pytest

from exporter.usage.jobs import container_id, env_job, job_name, parse_environ

DOCKER_ID = "4f3c1e8b7a2d" + "0" * 52
POD_ID = "9a8b7c6d5e4f" + "1" * 52


@pytest.mark.parametrize("cgroup, expected", [
    # cgroup v1, docker's cgroupfs driver
    (f"12:pids:/docker/{DOCKER_ID}\n11:cpu,cpuacct:/docker/{DOCKER_ID}\n", "docker-4f3c1e8b7a2d"),
    # cgroup v2 with the systemd driver
    (f"0::/system.slice/docker-{DOCKER_ID}.scope\n", "docker-4f3c1e8b7a2d"),
    (f"0::/machine.slice/libpod-{DOCKER_ID}.scope/container\n", "podman-4f3c1e8b7a2d"),
    (f"0::/system.slice/containerd.service/cri-containerd-{DOCKER_ID}.scope\n",
     "containerd-4f3c1e8b7a2d"),
    (f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234.slice/"
     f"cri-containerd-{POD_ID}.scope\n", "k8s-9a8b7c6d5e4f"),
    (f"11:memory:/kubepods/besteffort/pod5678/{POD_ID}\n", "k8s-9a8b7c6d5e4f"),
    ("0::/user.slice/user-1000.slice/session-3.scope\n", None),
    ("", None),
])
def test_container_ids(cgroup: str, expected: str | None) -> None:
    assert container_id(cgroup) == expected


def test_env_job_first_configured_variable_wins() -> None:
    names = ["SLURM_JOB_ID", "GPUACCT_JOB"]
    assert env_job({"GPUACCT_JOB": "mine", "SLURM_JOB_ID": "77"}, names) == "77"
    assert env_job({"GPUACCT_JOB": "mine"}, names) == "mine"
    assert env_job({"SLURM_JOB_ID": "  ", "GPUACCT_JOB": "x"}, names) == "x"
    assert env_job({"HOME": "/root"}, names) is None


@pytest.mark.parametrize("argv, expected", [
    (["python", "train.py", "--lr", "3"], "train.py"),
    (["/usr/bin/python3.11", "-u", "/home/a/exp/train.py"], "train.py"),
    (["python3", "-m", "torch.distributed.run", "x.py"], "torch.distributed.run"),
    (["python3", "-c", "import torch"], "python3 -c"),
    (["python3"], "python3"),
    (["bash", "run.sh"], "run.sh"),
    (["/opt/bin/my-sim", "--steps", "5"], "my-sim"),
    ([], "kworker/0:1"),
])
def test_job_names(argv: list[str], expected: str) -> None:
    assert job_name(argv, "kworker/0:1") == expected


def test_parse_environ_keeps_values_with_equals_and_skips_junk() -> None:
    raw = b"A=1\0B=x=y\0junk\0\0C=\xff\0"
    assert parse_environ(raw) == {"A": "1", "B": "x=y", "C": "\ufffd"}
