"""gpuacct's PAM session hook: asks the node daemon to hold a new login's session to its user's
GPU device gating before the session's first command (pam_exec runs it as root).

In /etc/pam.d/sshd (and login, su...), after pam_systemd where that is there:

    session optional pam_exec.so quiet /usr/local/lib/gpuacct/pam-session

Its one argument, if given: the daemon's user socket (exporter.actuator.user_socket). The
session's process is pam_exec's caller, this program's parent. It never fails a login: a
problem is said on stderr, and the exit status is 0. Only the standard library, run with
`python3 -I`, so a login does not wait for gpuacct's own imports.
"""

from __future__ import annotations

import json
import os
import socket
import sys

SOCKET = "/run/gpuacct/user.sock"
TIMEOUT = 3.0  # seconds a login may wait for the daemon


def main(argv: list[str]) -> int:
    user = os.environ.get("PAM_USER", "")
    if os.environ.get("PAM_TYPE") != "open_session" or not user:
        return 0
    path = argv[1] if len(argv) > 1 else SOCKET
    ask = {"op": "session", "user": user, "pid": os.getppid()}
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
            connection.settimeout(TIMEOUT)
            connection.connect(path)
            connection.sendall(json.dumps(ask).encode() + b"\n")
            reply = json.loads(connection.makefile("rb").readline(4096) or b"{}")
    except (OSError, ValueError) as exc:
        sys.stderr.write(f"gpuacct: {user}'s session not held to GPU gating ({path}: {exc})\n")
        return 0
    if "placed" not in reply:
        sys.stderr.write(f"gpuacct: {user}'s session not held: {reply.get('detail', reply)}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
