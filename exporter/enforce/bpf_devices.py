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
PROG_LOAD, PROG_ATTACH, PROG_DETACH = 5, 8, 9
PROG_GET_FD_BY_ID, OBJ_GET_INFO, PROG_QUERY = 13, 15, 16
PROG_TYPE_CGROUP_DEVICE, CGROUP_DEVICE = 15, 6
F_ALLOW_MULTI = 2  # beside the programs others attach (systemd's DeviceAllow=)
MAX_PROGRAMS = 64  # the kernel allows at most 64 programs per cgroup and attach type
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


def _bpf(command: int, attr: bytes | ctypes.Array[ctypes.c_char], what: str) -> int:
    """bpf(command, attr); a buffer given as `attr` holds what the kernel wrote back."""
    number = SYSCALL.get(platform.machine())
    if number is None:
        raise BpfError(f"{what}: bpf() has no known number on {platform.machine()}")
    buffer = ctypes.create_string_buffer(attr, ATTR_SIZE) if isinstance(attr, bytes) else attr
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


def attach_beside(group: Path, code: bytes | None) -> None:
    """The program attached to `group` beside the programs others put there (a systemd
    slice's), in place of ours before it: the new one first, so the GPUs it closes are
    never open meanwhile. None: ours only taken away."""
    fd = load(code) if code is not None else -1
    try:
        target = os.open(group, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        if fd >= 0:
            os.close(fd)
        raise BpfError(f"cannot open {group}: {exc.strerror}") from None
    old = []
    try:
        old = _ours(target, group)
        if fd >= 0:
            _bpf(PROG_ATTACH, struct.pack("<IIII", target, fd, CGROUP_DEVICE, F_ALLOW_MULTI),
                 f"attaching the device program to {group}")
        for previous in old:
            _bpf(PROG_DETACH, struct.pack("<IIII", target, previous, CGROUP_DEVICE, 0),
                 f"detaching the device program before from {group}")
    finally:
        for descriptor in (target, fd, *old):
            if descriptor >= 0:
                os.close(descriptor)


def _ours(target: int, group: Path) -> list[int]:
    """Descriptors of our programs attached to the cgroup (by their name)."""
    ids = (ctypes.c_uint32 * MAX_PROGRAMS)()
    query = ctypes.create_string_buffer(struct.pack(
        "<IIIIQI", target, CGROUP_DEVICE, 0, 0, ctypes.addressof(ids), MAX_PROGRAMS), ATTR_SIZE)
    _bpf(PROG_QUERY, query, f"listing the device programs of {group}")
    count = struct.unpack_from("<I", query, 24)[0]
    found: list[int] = []
    try:
        for id in ids[:count]:
            fd = _bpf(PROG_GET_FD_BY_ID, struct.pack("<III", id, 0, 0),
                      "opening a device program")
            info = ctypes.create_string_buffer(80)  # struct bpf_prog_info up to its name
            try:
                _bpf(OBJ_GET_INFO, struct.pack("<IIQ", fd, len(info), ctypes.addressof(info)),
                     "reading a device program's name")
            except BpfError:
                os.close(fd)
                raise
            if info.raw[64:80].rstrip(b"\0") == NAME:
                found.append(fd)
            else:
                os.close(fd)
    except BpfError:
        for fd in found:
            os.close(fd)
        raise
    return found


def available() -> str | None:
    """None if this kernel loads device programs for us; else what refused it."""
    try:
        os.close(load(program([])))
    except BpfError as exc:
        return str(exc)
    return None
