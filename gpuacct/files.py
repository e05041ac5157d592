"""Files that are either wholly old or wholly new, whatever happens mid-write."""

from __future__ import annotations

import os
from pathlib import Path


def write_atomically(path: Path, data: bytes, mode: int = 0o600, owner: int | None = None,
                     group: int | None = None) -> None:
    """Write to a temporary file beside `path` (its mode, owner and group set before a byte
    is written), fsync, then rename over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        if owner is not None or group is not None:
            os.fchown(fd, -1 if owner is None else owner, -1 if group is None else group)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def readable_by_others(path: Path) -> str | None:
    """Why a user other than its owner could read `path` (its mode lets every user read it
    and every folder above lets every user through); None if nobody else can."""
    mode = path.stat().st_mode & 0o777
    if not mode & 0o004:
        return None
    if any(not parent.stat().st_mode & 0o001 for parent in path.resolve().parents):
        return None  # a folder above keeps others out
    return (f"{path} can be read by every user of this machine (mode {mode:04o}): "
            f"chmod 600 it (or 700 its folder)")


def create_private(path: Path) -> None:
    """`path`, made empty and 0600 if it is not there, its folder 0700 if that is new."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
