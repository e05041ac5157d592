"""gpuacct: a user's own command on a GPU node.

  gpuacct balance [...]                  your balance and what is enforced (gpuacct-balance)
  gpuacct reserve N --for DURATION [--model PATTERN] [--node NODE] [--gpus 0,1] [--dry-run]
                                         reserve N GPUs on one node, or queue for them
  gpuacct gpus [--free] [--model PATTERN] [--json]
                                         every GPU: who works on it, who reserved it, free now
  gpuacct queue [--explain]              everything reserved and queued, with estimated starts
                                         (--explain: each request's priority and factors)
  gpuacct reservations                   yours
  gpuacct release [ID]                   end a reservation or queued request (all of yours)
  gpuacct run -- CMD...                  run CMD on the GPUs you reserved on this node
  gpuacct run --gpus N --for D [--model M] [--node X|any] -- CMD...
                                         reserve or queue, wait, run CMD when granted; the
                                         reservation ends with CMD (or when this is killed)
  gpuacct web                            a one-time link that logs you in to your web page

Durations: 90s, 30m, 2h, 1d, 1h30m. Who you are is what the kernel tells this node's gpuacct
daemon about your connection; nothing you type can change it.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, NoReturn

from exporter.users import balance_cli
from gpuacct.allocation import (
    MAX_GPUS,
    Answer,
    Entry,
    GpuStatus,
    Summary,
    UsageError,
    parse_duration,
    parse_gpus,
)
from gpuacct.build import add_version_argument
from gpuacct.cli_common import add_config_argument, load_or_exit
from gpuacct.patterns import ModelMatcher
from gpuacct.wording import duration

SOCKET_ENV = balance_cli.SOCKET_ENV


def _count(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= MAX_GPUS:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a number of GPUs from 1 to "
                                         f"{MAX_GPUS}")
    return int(text)


def _id(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a request id such as 12")
    return int(text)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One line, not the usage as well: `gpuacct COMMAND --help` has that."""
        _fail(message, 2)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="gpuacct", description=__doc__,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_version_argument(parser)
    add_config_argument(parser)
    parser.add_argument("--socket", type=Path, help=f"the node daemon's socket (${SOCKET_ENV})")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("balance", help="your balance (the same as gpuacct-balance)",
                   add_help=False)
    reserve = sub.add_parser("reserve", help="reserve GPUs, or queue for them")
    reserve.add_argument("count", type=_count, metavar="N")
    reserve.add_argument("--for", dest="duration", required=True, metavar="DURATION")
    reserve.add_argument("--model", help="a pattern searched in the GPU model, any case")
    reserve.add_argument("--node", help="on this node (default: any; with --gpus, this one)")
    reserve.add_argument("--gpus", help="exactly these GPU indices, e.g. 0,1")
    reserve.add_argument("--dry-run", action="store_true",
                         help="say what it would get and when; reserve and queue nothing")
    gpus = sub.add_parser("gpus", help="every GPU: who works on it, who reserved it, what is "
                                       "free now")
    gpus.add_argument("--free", action="store_true", help="only the GPUs free now")
    gpus.add_argument("--model", help="only GPUs whose model matches (a pattern, any case)")
    gpus.add_argument("--json", action="store_true", help="as JSON, for scripts")
    queue = sub.add_parser("queue", help="all reservations and the queue")
    queue.add_argument("--explain", action="store_true",
                       help="each queued request's priority and its factors (like sprio)")
    sub.add_parser("reservations", help="your reservations and queued requests")
    release = sub.add_parser("release", help="end a reservation or queued request")
    release.add_argument("id", type=_id, nargs="?", help="default: every one of yours")
    run = sub.add_parser("run", help="run a command on your reserved GPUs here; with --gpus, "
                                     "reserve or queue, wait, and run it when granted")
    run.add_argument("--gpus", dest="count", type=_count, metavar="N",
                     help="reserve N GPUs (or queue), wait, run CMD on them, release at its end")
    run.add_argument("--for", dest="duration", metavar="DURATION",
                     help="with --gpus: how long at most (the reservation's length)")
    run.add_argument("--model", help="with --gpus: a pattern searched in the GPU model")
    run.add_argument("--node", help="with --gpus: this node (default), another, or `any` "
                                    "(granted elsewhere: says where, runs nothing)")
    run.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD")
    sub.add_parser("web", help="a one-time link to your web page, no password")
    return parser


def ask(path: Path, request: dict[str, Any], timeout: float = 15.0) -> Answer:
    """One request to the node daemon; exits with its message when it is refused."""
    try:
        reply = balance_cli.daemon_reply(path, request, timeout)
    except (OSError, ValueError) as exc:
        _fail(f"cannot reach this node's gpuacct daemon at {path}: "
              f"{getattr(exc, 'strerror', None) or exc}", 1)
    return _answer(reply)


def _answer(reply: dict[str, Any]) -> Answer:
    """The daemon's answer; exits with its message when it is refused."""
    if "detail" in reply:
        _fail(str(reply["detail"]), 2 if reply.get("kind") == "refused" else 1)
    return Answer.model_validate(reply.get("answer", {}))


def _fail(message: str, code: int) -> NoReturn:
    print(f"gpuacct: {message}", file=sys.stderr)
    raise SystemExit(code)


def _when(t: float | None, now: float) -> str:
    if t is None:
        return "-"
    stamp = time.strftime("%m-%d %H:%M", time.localtime(t))
    return f"{stamp} ({'in ' + duration(t - now) if t > now else 'now'})"


def render(summary: Summary, title: str) -> str:
    if not summary.entries:
        return f"{title}: none"
    rows = [("ID", "USER", "STATE", "GPUS", "NODE", "GPU IDS", "POS", "STARTS", "ENDS")]
    for e in summary.entries:
        rows.append((str(e.id), e.user, e.state, str(e.count), e.node or "-",
                     ",".join(map(str, e.gpus)) or "-", str(e.position or "-"),
                     _when(e.started if e.state == "granted" else e.estimated_start,
                           summary.now),
                     _when(e.ends if e.state == "granted" else
                           (e.estimated_start + e.seconds if e.estimated_start else None),
                           summary.now)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in rows)


def _gib(value: int | None) -> str:
    return "-" if value is None else f"{value / (1 << 30):.1f}"


def render_gpus(gpus: tuple[GpuStatus, ...], now: float) -> str:
    if not gpus:
        return "no GPU matches"
    rows = [("NODE", "GPU", "MODEL", "MEMORY GiB", "UTIL", "IN USE BY", "RESERVED", "FREE")]
    for g in gpus:
        reserved = (f"{g.reserved_by} until {_when(g.reserved_until, now)}"
                    if g.reserved_by else "-")
        rows.append((g.node, str(g.index), g.model,
                     f"{_gib(g.memory_used_bytes)}/{_gib(g.memory_total_bytes)}",
                     "-" if g.utilization is None else f"{g.utilization:.0%}",
                     ", ".join(g.users) or "-", reserved, "yes" if g.free else "no"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    table = "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                      for r in rows)
    free = sum(g.free for g in gpus)
    return f"{table}\n{free} of {len(gpus)} GPU{'' if len(gpus) == 1 else 's'} free now"


def _gpus(path: Path, free: bool, model: str | None, as_json: bool) -> None:
    try:
        pattern = ModelMatcher(model) if model is not None else None
    except ValueError as exc:
        raise UsageError(f"--model {model!r}: {exc}") from None
    shown = tuple(g for g in ask(path, {"op": "gpus"}).gpus
                  if (g.free or not free) and (pattern is None or pattern.search(g.model)))
    if as_json:
        print(json.dumps([g.model_dump() for g in shown], indent=2))
    else:
        print(render_gpus(shown, time.time()))


def explain(summary: Summary) -> str:
    """The queue in its order with each request's priority factors (allocator.fairshare)."""
    queued = [e for e in summary.entries if e.state == "queued" and e.priority is not None]
    if not queued:
        return "nobody is waiting"
    rows = [("POS", "ID", "USER", "ACCOUNT", "PRIORITY", "AGE", "FAIRSHARE", "USAGE", "SHARES")]
    for e in queued:
        p = e.priority
        assert p is not None
        rows.append((str(e.position or "-"), str(e.id), e.user, p.account, f"{p.priority:.0f}",
                     f"{p.age:.3f}", f"{p.fairshare:.3f}", f"{p.usage:.1%}", f"{p.shares:.1%}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    table = "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                      for r in rows)
    return (f"{table}\npriority = age weight x AGE + fair-share weight x FAIRSHARE; "
            "FAIRSHARE = 2^-(USAGE/SHARES): USAGE is the account's part of all usage (decayed), "
            "SHARES its part of the shares")


def my_gpus_here(answer: Answer) -> list[Entry]:
    assert answer.summary is not None
    return [e for e in answer.summary.entries
            if e.state == "granted" and e.node == answer.node]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["balance"]:
        return balance_cli.main(argv[1:])
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_usage(sys.stderr)
        print("gpuacct: a COMMAND is required", file=sys.stderr)
        return 2
    settings = load_or_exit(args.config)
    path = args.socket or Path(os.environ.get(SOCKET_ENV) or settings.exporter.actuator.user_socket
                               or "/run/gpuacct/user.sock")
    try:
        if args.command == "reserve":
            request: dict[str, Any] = {"op": "reserve", "count": args.count,
                                       "seconds": parse_duration(args.duration),
                                       "model": args.model, "node": args.node,
                                       "dry_run": args.dry_run}
            if args.gpus is not None:
                request["gpus"] = parse_gpus(args.gpus)
                if len(request["gpus"]) != args.count:
                    raise UsageError(f"--gpus {args.gpus}: {len(request['gpus'])} GPUs named "
                                     f"but {args.count} asked for")
            print(ask(path, request).text)
        elif args.command == "gpus":
            _gpus(path, args.free, args.model, args.json)
        elif args.command in ("queue", "reservations"):
            answer = ask(path, {"op": args.command})
            assert answer.summary is not None
            if getattr(args, "explain", False):
                print(explain(answer.summary))
            else:
                print(render(answer.summary, "reserved or queued" if args.command == "queue"
                             else "your reservations"))
        elif args.command == "release":
            print(ask(path, {"op": "release", "id": args.id}).text)
        elif args.command == "run" and args.count is not None:
            return _waiting_run(path, args)
        elif args.command == "run":
            return _run(path, args.cmd)
        elif args.command == "web":
            print(ask(path, {"op": "login"}).text)
    except UsageError as exc:
        _fail(str(exc), 2)
    return 0


POLL_SECONDS = 0.25  # how often a waiting run asks whether its request was granted


def _waiting_run(path: Path, args: argparse.Namespace) -> int:
    """Reserve or queue; hold the request through the node daemon (its connection's end, by
    exit or by kill, withdraws or releases it); wait for the grant; run CMD on the GPUs as
    this user; pass its exit status through."""
    cmd = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    if not cmd:
        raise UsageError("run: give the command after --, e.g. gpuacct run --gpus 1 --for 2h "
                         "-- python train.py")
    if args.duration is None:
        raise UsageError("run --gpus: say for how long with --for, e.g. --for 2h")
    here = ask(path, {"op": "reservations"}).node
    node = None if args.node == "any" else args.node or here
    hold, reply = _hold(path, {"reserve": {
        "count": args.count, "seconds": parse_duration(args.duration), "model": args.model,
        "node": node}})
    answer = _answer(reply)
    if answer.id is None:
        _fail("the control plane is older than this node: it does not say which request it "
              "made, so this run cannot hold it; use gpuacct reserve, then gpuacct run", 1)
    print(answer.text.splitlines()[0], flush=True)
    entry, hold = _granted(path, answer.id, hold)
    if entry.node != here:
        hold.sendall(b"keep\n")  # the reservation is the user's, to use on that node
        print(f"granted on {entry.node}, GPU {','.join(map(str, entry.gpus))}: run it there "
              f"(`gpuacct run -- CMD` on {entry.node}); nothing was run here")
        return 0
    env = {**os.environ, "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
           "CUDA_VISIBLE_DEVICES": ",".join(map(str, entry.gpus))}
    print(f"granted: GPU {','.join(map(str, entry.gpus))} on {here}; running {cmd[0]}",
          flush=True)
    try:
        child = subprocess.Popen(cmd, env=env)
    except OSError as exc:
        _fail(f"cannot run {cmd[0]}: {exc.strerror}", 127)
    while True:
        try:
            return child.wait()  # then this process exits: the daemon releases the GPUs
        except KeyboardInterrupt:
            continue  # Ctrl-C reached CMD too; its exit ends the run


def _hold(path: Path, request: dict[str, Any]) -> tuple[socket.socket, dict[str, Any]]:
    """The connection the node daemon holds a request by, for this process's life (it
    makes the request, `reserve`, or takes over request `id`), and its first reply."""
    hold = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        hold.connect(str(path))
        hold.sendall(json.dumps({"op": "hold", **request}).encode() + b"\n")
        reply: dict[str, Any] = json.loads(hold.makefile("rb").readline(1 << 20) or b"{}")
    except (OSError, ValueError) as exc:
        _fail(f"cannot reach this node's gpuacct daemon at {path}: "
              f"{getattr(exc, 'strerror', None) or exc}", 1)
    return hold, reply


def _rehold(path: Path, id: int) -> socket.socket:
    """Request `id` held again, by a daemon that restarted."""
    hold, reply = _hold(path, {"id": id})
    if reply.get("held") is not True:
        ask(path, {"op": "release", "id": id})
        _fail(f"cannot hold request {id} at {path}: {reply.get('detail', reply)}", 1)
    return hold


def _granted(path: Path, id: int, hold: socket.socket) -> tuple[Entry, socket.socket]:
    """Wait for request `id`'s grant, saying when its place in the queue changes; a daemon
    that restarted meanwhile is asked to hold the request again."""
    said = None
    while True:
        if select.select([hold], [], [], 0)[0] and not hold.recv(64):
            hold.close()
            hold = _rehold(path, id)
        answer = ask(path, {"op": "reservations"})
        assert answer.summary is not None
        mine = [e for e in answer.summary.entries if e.id == id]
        if not mine:
            _fail(f"request {id} ended before it was granted (cancelled, or released "
                  "elsewhere)", 1)
        if mine[0].state == "granted":
            return mine[0], hold
        if mine[0].position != said:
            said = mine[0].position
            print(f"waiting: position {said} in the queue", flush=True)
        time.sleep(POLL_SECONDS)


def _run(path: Path, cmd: list[str]) -> int:
    cmd = cmd[1:] if cmd[:1] == ["--"] else cmd
    if not cmd:
        raise UsageError("run: give the command after --, e.g. gpuacct run -- python train.py")
    answer = ask(path, {"op": "reservations"})
    mine = my_gpus_here(answer)
    if not mine:
        raise UsageError(f"you hold no reservation on {answer.node}: "
                         "`gpuacct reserve N --for DURATION` first")
    gpus = sorted({g for e in mine for g in e.gpus})
    # NVML's indices are in PCI bus order; CUDA's own default order can differ.
    env = {**os.environ, "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
           "CUDA_VISIBLE_DEVICES": ",".join(map(str, gpus))}
    try:
        os.execvpe(cmd[0], cmd, env)
    except OSError as exc:
        _fail(f"cannot run {cmd[0]}: {exc.strerror}", 127)
