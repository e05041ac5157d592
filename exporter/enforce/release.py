"""Everything this node's enforcement put in place, taken back: every CPU quota lifted (its
cgroup removed where gpuacct made one), every login notice removed, and the state emptied so
a later start applies the enforcer's policy afresh. For a stack that stops (the test machine's
users get their CPU back) and for a node leaving gpuacct; never done by a mere restart, which
keeps the policy in force."""

from __future__ import annotations

import logging

from exporter.enforce.hookfile import remove_hook
from exporter.enforce.state import ActuatorState, StateFile
from exporter.enforce.throttle import LimitError, detect
from gpuacct.config import ActuatorSettings

log = logging.getLogger(__name__)


def release_all(settings: ActuatorSettings) -> list[str]:
    """The users whose quota or notice was taken back; problems are logged, and the rest
    still released."""
    state_file = StateFile(settings.state_file)
    state = state_file.load()
    limiter = detect(settings.cpu_limiter, settings.cgroup_root)
    released = []
    for user, applied in state.users.items():
        if applied.quota is not None and limiter is not None:
            try:
                limiter.lift(applied.uid)
            except LimitError as exc:
                log.error("cannot lift %s's CPU quota: %s", user, exc)
        remove_hook(settings.hook_dir, user)
        released.append(user)
    for left in settings.hook_dir.glob("*.json") if settings.hook_dir.is_dir() else ():
        left.unlink(missing_ok=True)  # a notice of a user the state no longer names
    if settings.state_file.exists():
        state_file.save(ActuatorState())
    return released
