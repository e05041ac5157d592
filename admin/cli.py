"""gpuacct-admin: the control host's day-two operations.

  gpuacct-admin backup DIR [--keep N]   every store, consistent while the services run
  gpuacct-admin restore DIR/gpuacct-... the backup's stores in place (services stopped)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from admin.backup import AdminError, restore, take
from gpuacct.build import add_version_argument
from gpuacct.cli_common import add_config_argument, command_or_usage, load_or_exit
from gpuacct.store import StoreError


def _keep(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 10_000:
        raise argparse.ArgumentTypeError(f"{text!r}: a whole number of backups, 1 or more")
    return int(text)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gpuacct-admin", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_version_argument(parser)
    add_config_argument(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    backup = sub.add_parser("backup", help="back up every store into a new folder in DIR")
    backup.add_argument("dir", type=Path, metavar="DIR")
    backup.add_argument("--keep", type=_keep, metavar="N",
                        help="then keep only the newest N backups in DIR")
    again = sub.add_parser("restore", help="put a backup's stores in place (stop the "
                                           "services first, on every host)")
    again.add_argument("folder", type=Path, metavar="BACKUP")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    command = command_or_usage(parser, args)
    settings = load_or_exit(args.config)
    try:
        if command == "backup":
            taken = take(settings, args.dir, args.keep)
            print(f"backed up {', '.join(taken.stores)} into {taken.folder}")
            if taken.absent:
                print(f"not on this host (yet): {', '.join(taken.absent)}")
            return 0
        restored = restore(settings, args.folder)
        print(f"restored {', '.join(restored)} from {args.folder}; start the services")
        return 0
    except (AdminError, StoreError) as exc:
        print(f"gpuacct-admin {command}: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"gpuacct-admin {command}: {exc.filename or ''}: {exc.strerror}", file=sys.stderr)
        return 1
