"""A cgroup v2 device program: the BPF program the kernel runs at every open() of a device node
by a process of the cgroup it is attached to (BPF_PROG_TYPE_CGROUP_DEVICE, as runc's device
filter and systemd's DeviceAllow= use). Ours refuses the character devices it names and lets
everything else through. Loaded and attached with the bpf() system call, through ctypes.
"""

from __future__ import annotations

import ctypes
import os
import platform
import struct
from collections.abc import Iterable
from pathlib import Path

SYSCALL = {"x86_64": 321, "aarch64": 280}  # bpf()'s number
PROG_LOAD, PROG_ATTACH = 5, 8
PROG_TYPE_CGROUP_DEVICE, CGROUP_DEVICE = 15, 6
DEVCG_DEV_CHAR = 2
NAME = b"gpuacct_gpus"
ATTR_SIZE = 128  # the kernel wants the rest of union bpf_attr zeroed
_libc = ctypes.CDLL(None, use_errno=True)


class BpfError(Exception):
    """bpf() refused; the message says what and why."""


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


def program(closed: Iterable[tuple[int, int]]) -> bytes:
    """r0 = 0 (refused) for a character device whose major:minor is in `closed`, else 1.

    The context is struct bpf_cgroup_dev_ctx: access_type (access << 16 | type), major,
    minor, each a u32."""
    closed = list(closed)
    code = [_insn(0x61, dst=2, src=1, off=0),  # r2 = ctx->access_type
            _insn(0x57, dst=2, imm=0xFFFF),  # r2 &= 0xffff: the device's type
            _insn(0x61, dst=3, src=1, off=4),  # r3 = ctx->major
            _insn(0x61, dst=4, src=1, off=8),  # r4 = ctx->minor
            _insn(0x55, dst=2, off=4 * len(closed), imm=DEVCG_DEV_CHAR)]  # not char: allow
    for major, minor in closed:
        code += [_insn(0x55, dst=3, off=3, imm=major),  # another major: the next one
                 _insn(0x55, dst=4, off=2, imm=minor),
                 _insn(0xB7, dst=0, imm=0),  # r0 = 0: refused
                 _insn(0x95)]  # exit
    code += [_insn(0xB7, dst=0, imm=1), _insn(0x95)]  # r0 = 1: allowed
    return b"".join(code)


def _bpf(command: int, attr: bytes, what: str) -> int:
    number = SYSCALL.get(platform.machine())
    if number is None:
        raise BpfError(f"{what}: bpf() has no known number on {platform.machine()}")
    buffer = ctypes.create_string_buffer(attr, ATTR_SIZE)
    result = int(_libc.syscall(number, command, buffer, ATTR_SIZE))
    if result < 0:
        raise BpfError(f"{what}: {os.strerror(ctypes.get_errno())}")
    return result


def load(code: bytes) -> int:
    """The program loaded: its file descriptor."""
    insns, license_ = ctypes.create_string_buffer(code), ctypes.create_string_buffer(b"GPL")
    attr = struct.pack("<IIQQIIQII16s", PROG_TYPE_CGROUP_DEVICE, len(code) // 8,
                       ctypes.addressof(insns), ctypes.addressof(license_), 0, 0, 0, 0, 0, NAME)
    return _bpf(PROG_LOAD, attr, "loading a device program")


def attach(group: Path, code: bytes) -> None:
    """The program attached to the cgroup (v2) `group`, in place of the one there: the kernel
    keeps it there; no descriptor needs to stay open."""
    fd = load(code)
    try:
        target = os.open(group, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        os.close(fd)
        raise BpfError(f"cannot open {group}: {exc.strerror}") from None
    try:
        _bpf(PROG_ATTACH, struct.pack("<IIII", target, fd, CGROUP_DEVICE, 0),
             f"attaching the device program to {group}")
    finally:
        os.close(target)
        os.close(fd)


def available() -> str | None:
    """None if this kernel loads device programs for us; else what refused it."""
    try:
        os.close(load(program([])))
    except BpfError as exc:
        return str(exc)
    return None
