"""The per-user file the login hook and `gpuacct-balance` read: what is enforced and why.

One JSON file per user in `hook_dir`, owned by the user and readable only by them and root,
written and read through the one model `HookFile`.
"""

from __future__ import annotations

import logging
from pathlib import Path

from pydantic import ValidationError

from gpuacct.files import write_atomically
from gpuacct.policy import UserPolicy

log = logging.getLogger(__name__)


class HookFile(UserPolicy):
    """A user's policy as the node applies it, with who, when, and whether only logged."""

    user: str
    updated: float
    dry_run: bool = False


def hook_path(hook_dir: Path, user: str) -> Path:
    return hook_dir / f"{user}.json"


def write_hook(hook_dir: Path, user: str, uid: int, policy: UserPolicy, dry_run: bool,
               now: float) -> None:
    hook = HookFile(user=user, updated=now, dry_run=dry_run, **dict(policy))
    try:
        hook_dir.mkdir(parents=True, exist_ok=True)
        hook_dir.chmod(0o755)
        write_atomically(hook_path(hook_dir, user), hook.model_dump_json(indent=1).encode(),
                         mode=0o600, owner=uid)
    except OSError as exc:
        log.error("cannot write the hook file for %s in %s: %s", user, hook_dir, exc)


def remove_hook(hook_dir: Path, user: str) -> None:
    hook_path(hook_dir, user).unlink(missing_ok=True)


def read_hook(hook_dir: Path, user: str) -> HookFile | None:
    """The user's enforcement state, None when nothing is enforced (or the file is unreadable)."""
    try:
        return HookFile.model_validate_json(hook_path(hook_dir, user).read_bytes())
    except (OSError, ValidationError):
        return None
