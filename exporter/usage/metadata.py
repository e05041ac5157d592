"""What a job is, beyond its id: the framework it runs, its script, the script's arguments with
secrets taken out, and where it runs. All of it is shown to administrators and the job's owner,
so nothing here may carry a secret or grow without bound.

The framework comes from the libraries a process has mapped (`libtorch_cuda.so` in
/proc/<pid>/maps once `import torch` ran), else from its command line (`torchrun`, `-m
paddle.distributed.launch`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

from exporter.usage.jobs import interpreter

FRAMEWORKS = ("torch", "tensorflow", "jax", "mindspore", "paddle")
# A mapped library's file name, as each framework's wheels name theirs.
_LIBRARIES = re.compile(
    r"/(?:(?P<torch>libtorch[\w.-]*\.so|libc10[\w.-]*\.so)"
    r"|(?P<tensorflow>libtensorflow[\w.-]*\.so|_pywrap_tensorflow[\w.-]*\.so)"
    r"|(?P<jax>xla_extension[\w.-]*\.so|libjax[\w.-]*\.so|_jax[\w.-]*\.so)"
    r"|(?P<mindspore>libmindspore[\w.-]*\.so|_c_expression[\w.-]*\.so)"
    r"|(?P<paddle>libpaddle[\w.-]*\.so))[^/\n]*$", re.M)
# A program or module on the command line that means the framework.
_COMMANDS = {
    "torch": re.compile(r"^(torchrun|torch\.distributed\.(run|launch)|torch(\..*)?)$"),
    "tensorflow": re.compile(r"^(tensorflow(\..*)?|tensorboard)$"),
    "jax": re.compile(r"^(jax(\..*)?)$"),
    "mindspore": re.compile(r"^(msrun|mindspore(\..*)?)$"),
    "paddle": re.compile(r"^(paddle(\..*)?|paddle\.distributed\.launch)$"),
}
# Flags whose value is a secret (`--token X`, `--api-key=X`), and NAME=value words whose name
# says it is one (`WANDB_API_KEY=...`, `db_password=...`).
_SECRET_FLAG = re.compile(r"^--?[\w-]*(token|passw(or)?d|passwd|secret|api[-_]?key|"
                          r"credential|auth)[\w-]*$", re.I)
_SECRET_WORD = re.compile(r"^([\w.-]*(token|passw(or)?d|passwd|secret|key|credential)"
                          r"[\w.-]*)=.*$", re.I)
_URL_PASSWORD = re.compile(r"(://[^/:@\s]+):[^/@\s]+@")
REDACTED = "<redacted>"
MAX_ARGS = 256


def framework_from_maps(maps: str) -> str:
    match = _LIBRARIES.search(maps)
    if match is None:
        return ""
    return next(name for name, value in match.groupdict().items() if value)


def framework_from_argv(argv: Sequence[str]) -> str:
    """`torchrun train.py`, `python -m torch.distributed.run`, `msrun ...`: the framework
    named by the program, the module it runs or its script."""
    script, _ = script_and_args(argv)
    words = [os.path.basename(argv[0]) if argv else "",
             script.removeprefix("-m ") if script.startswith("-m ") else os.path.basename(script)]
    for framework, pattern in _COMMANDS.items():
        if any(pattern.match(word) for word in words):
            return framework
    return ""


def script_and_args(argv: Sequence[str]) -> tuple[str, list[str]]:
    """The script a job runs as it was given (`train.py`, `-m pkg.main`, the program itself)
    and the arguments after it."""
    if not argv:
        return "", []
    if not interpreter(argv[0]):
        return argv[0], list(argv[1:])
    rest = list(argv[1:])
    for i, arg in enumerate(rest):
        if arg in ("-m", "-c", "-e"):
            return f"{arg} {rest[i + 1]}" if i + 1 < len(rest) else arg, rest[i + 2:]
        if not arg.startswith("-"):
            return arg, rest[i + 1:]
    return argv[0], rest


def redact(args: Sequence[str]) -> list[str]:
    """The arguments with every secret replaced: the value after or in a secret flag, a
    NAME=value whose name says secret, a password inside a URL."""
    out: list[str] = []
    hide_next = False
    for arg in args:
        if hide_next and not arg.startswith("-"):
            out.append(REDACTED)
            hide_next = False
            continue
        hide_next = False
        flag, eq, _ = arg.partition("=")
        if _SECRET_FLAG.match(flag):
            out.append(f"{flag}={REDACTED}" if eq else arg)
            hide_next = not eq
        elif (word := _SECRET_WORD.match(arg)) is not None:
            out.append(f"{word.group(1)}={REDACTED}")
        else:
            out.append(_URL_PASSWORD.sub(rf"\1:{REDACTED}@", arg))
    return out


def shown(args: Sequence[str], limit: int = MAX_ARGS) -> str:
    """Redacted arguments as one line of at most `limit` characters (cut with an ellipsis)."""
    line = " ".join(redact(args))
    line = "".join(c if c.isprintable() else "?" for c in line)
    return line if len(line) <= limit else line[:limit - 1] + "…"
