"""/proc oddities, from fixture directories laid out like /proc."""

from __future__ import annotations

from pathlib import Path

import pytest

from exporter.usage.procs import CLOCK_TICKS, PAGE_SIZE, ProcessTable, parse_stat


def stat_line(pid: int, comm: str, ppid: int = 1, session: int = 100, utime: int = 50,
              stime: int = 25, cutime: int = 0, cstime: int = 0, start: int = 1000,
              rss: int = 256, image: int = 0) -> str:
    fields = ["S", ppid, pid, session, 0, -1, 4194304, 0, 0, 0, 0, utime, stime, cutime, cstime,
              20, 0, 1, 0, start, 123456, rss]
    tail = [0] * 30
    tail[23:27] = [image] * 4  # arg_start, arg_end, env_start, env_end: an exec moves them
    return f"{pid} ({comm}) " + " ".join(map(str, fields + tail)) + "\n"


def make_proc(root: Path, pid: int, uid: int, comm: str = "python3",
              argv: tuple[str, ...] = ("python3", "train.py"), env: str = "",
              cgroup: str = "0::/user.slice\n", **stat: int) -> None:
    d = root / str(pid)
    d.mkdir(parents=True)
    (d / "stat").write_text(stat_line(pid, comm, **stat))
    (d / "status").write_text(f"Name:\t{comm}\nUid:\t{uid}\t0\t{uid}\t{uid}\n")
    (d / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
    (d / "environ").write_text(env)
    (d / "cgroup").write_text(cgroup)


def table(root: Path) -> ProcessTable:
    return ProcessTable(1000, ["env", "container", "session"], ["GPUACCT_JOB"], str(root))


def test_reads_times_memory_and_identity(tmp_path: Path) -> None:
    make_proc(tmp_path, 4321, 54321, env="GPUACCT_JOB=exp7\0", utime=300, stime=100,
              cutime=7, cstime=3, rss=1000)
    (sample,) = table(tmp_path).scan()
    assert sample.cpu_ticks == 400
    assert sample.child_ticks == 10
    assert sample.rss_bytes == 1000 * PAGE_SIZE
    assert sample.identity.user == "uid_54321"  # no passwd entry
    assert sample.identity.job == "exp7"
    assert sample.identity.job_source == "env"
    assert sample.identity.name == "train.py"
    assert CLOCK_TICKS > 0


def test_comm_with_spaces_and_parentheses(tmp_path: Path) -> None:
    make_proc(tmp_path, 10, 2000, comm="we ird) (name", session=77)
    (sample,) = table(tmp_path).scan()
    assert sample.identity.job == "sid-77"
    assert parse_stat(b"1 (a) b) S 0")[0] == "a) b"


def test_system_users_and_kernel_threads_are_not_billed(tmp_path: Path) -> None:
    make_proc(tmp_path, 1, 0, comm="systemd")
    make_proc(tmp_path, 2, 999, comm="postgres")
    make_proc(tmp_path, 3, 1000, comm="python3")
    t = table(tmp_path)
    assert [s.pid for s in t.scan()] == [3]
    assert t.unbilled_pids == {1, 2}


def test_only_users_are_billed_when_only_users_is_set(tmp_path: Path) -> None:
    """gpuacct-stack --demo meters its own users only (uids without a passwd entry are
    named uid_<n>)."""
    make_proc(tmp_path, 3, 54321)
    make_proc(tmp_path, 4, 54322)
    t = ProcessTable(1000, ["session"], [], str(tmp_path), only_users=["uid_54322"])
    assert [s.pid for s in t.scan()] == [4]
    assert t.unbilled_pids == {3}


def test_vanished_and_garbled_entries_are_skipped(tmp_path: Path) -> None:
    make_proc(tmp_path, 20, 1000)
    (tmp_path / "21").mkdir()  # exited: the directory is there, its files are not
    make_proc(tmp_path, 22, 1000)
    (tmp_path / "22" / "stat").write_text("22 (trunc")  # truncated read
    make_proc(tmp_path, 23, 1000)
    (tmp_path / "23" / "status").write_text("Name:\tx\n")  # no Uid line
    (tmp_path / "self").mkdir()
    (tmp_path / "meminfo").write_text("")
    assert [s.pid for s in table(tmp_path).scan()] == [20]


def test_unreadable_environ_falls_back_to_the_next_source(tmp_path: Path) -> None:
    make_proc(tmp_path, 24, 1000, session=55)
    (tmp_path / "24" / "environ").unlink()  # a zombie, or a permission race
    (sample,) = table(tmp_path).scan()
    assert sample.identity.job == "sid-55"


def test_identity_is_read_once_per_pid_and_start_time(tmp_path: Path) -> None:
    make_proc(tmp_path, 30, 1000, env="GPUACCT_JOB=first\0", start=500)
    t = table(tmp_path)
    assert t.scan()[0].identity.job == "first"
    (tmp_path / "30" / "environ").write_text("GPUACCT_JOB=changed\0")
    assert t.scan()[0].identity.job == "first"  # not re-read for the same process
    (tmp_path / "30" / "stat").write_text(stat_line(30, "python3", start=900))
    assert t.scan()[0].identity.job == "changed"  # pid reused: a new process


def test_identity_is_read_again_after_an_exec(tmp_path: Path) -> None:
    # Caught between fork and exec: the parent's environment and command line.
    make_proc(tmp_path, 31, 1000, comm="bash", argv=("bash",), env="HOME=/\0", image=1)
    t = table(tmp_path)
    assert t.scan()[0].identity.job == "sid-100"
    (tmp_path / "31" / "environ").write_text("GPUACCT_JOB=exp9\0")
    (tmp_path / "31" / "cmdline").write_bytes(b"python3\0train.py\0")
    (tmp_path / "31" / "stat").write_text(stat_line(31, "python3", image=7))
    identity = t.scan()[0].identity
    assert (identity.job, identity.name) == ("exp9", "train.py")


def test_container_job_when_no_env_var(tmp_path: Path) -> None:
    make_proc(tmp_path, 40, 1000, cgroup="0::/system.slice/docker-" + "ab" * 32 + ".scope\n")
    assert table(tmp_path).scan()[0].identity.job == "docker-abababababab"


def test_an_exiting_process_keeps_its_job(tmp_path: Path) -> None:
    """A zombie has lost its environment and its command line's addresses: its last CPU
    time still counts to the job it had, not to a new job of its session."""
    make_proc(tmp_path, 4321, 54321, env="GPUACCT_JOB=exp7\0", session=77, image=4096)
    procs = table(tmp_path)
    assert [s.identity.job for s in procs.scan()] == ["exp7"]
    stat = tmp_path / "4321" / "stat"
    stat.write_text(stat_line(4321, "python3", session=77, utime=900, image=0)
                    .replace(" S ", " Z ", 1))
    (tmp_path / "4321" / "environ").write_text("")
    (sample,) = procs.scan()
    assert (sample.identity.job, sample.cpu_ticks) == ("exp7", 925)


def test_a_framework_is_looked_for_in_the_maps_with_a_backoff_then_no_more(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr("exporter.usage.procs.time.monotonic", lambda: now[0])
    torch = "7f00-7f01 r-xp 0 08:01 1 /venv/site-packages/torch/lib/libtorch_cuda.so\n"
    for pid, comm in ((10, "python3"), (11, "python3"), (12, "bash")):
        make_proc(tmp_path, pid, 2000, comm=comm, session=pid)
        (tmp_path / str(pid) / "maps").write_text("7f00-7f01 r-xp 0 08:01 1 /usr/lib/libc.so.6\n")
    t = table(tmp_path)

    def frameworks(at: float) -> dict[int, str]:
        now[0] = 1000.0 + at
        return {s.pid: s.framework for s in t.scan()}

    assert frameworks(0) == {10: "", 11: "", 12: ""}
    for pid in (10, 12):
        (tmp_path / str(pid) / "maps").write_text(torch)  # `import torch` ran
    assert frameworks(0.5)[10] == ""  # not looked at again yet
    assert frameworks(1.0) == {10: "torch", 11: "", 12: ""}  # a shell's maps are never read
    (tmp_path / "10" / "maps").write_text("")
    assert frameworks(2.0)[10] == "torch"  # once found, kept
    for at in (3, 7, 15, 31, 61, 91, 601):  # 11 is watched ten minutes, then no more
        frameworks(at)
    (tmp_path / "11" / "maps").write_text(torch)
    assert frameworks(700)[11] == ""
