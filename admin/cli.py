"""gpuacct-admin: the control host's trust and day-two operations.

  gpuacct-admin init --host NAME          the CA, certificate, secrets and config, made once
  gpuacct-admin node add NAME ADDRESS     enrol a GPU node: its key, certificate, scrape entry
  gpuacct-admin node remove NAME          it can no longer sync, and is no longer scraped
  gpuacct-admin wheelhouse CHECKOUT       the wheels nodes install from, with no index
  gpuacct-admin backup DIR [--keep N]     every store, consistent while the services run
  gpuacct-admin restore DIR/gpuacct-...   the backup's stores in place (services stopped)
  gpuacct-admin influxdb-user             InfluxDB's user and database (its unit runs it)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from admin import influxdb
from admin import wheelhouse as wheelhouse_folder
from admin.backup import AdminError, restore, take
from admin.deployment import ADMIN_PASSWORD, EXPORTER_PORT, Etc, init, node_add, node_remove
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
    init = sub.add_parser("init", help="make the deployment's CA, certificate, secrets and "
                                       "config where missing (run again: nothing changes)")
    init.add_argument("--host", action="append", default=[], metavar="NAME",
                      help="a name or address nodes and users reach this host by (repeat)")
    node = sub.add_parser("node", help="enrol or remove a GPU node")
    verbs = node.add_subparsers(dest="verb", metavar="add|remove", required=True)
    add = verbs.add_parser("add", help="enrol a node and write the bundle its install takes")
    add.add_argument("name", help="the node's host name, as `hostname` prints it there")
    add.add_argument("address", help="the address Prometheus and the enforcer reach it at")
    add.add_argument("--port", type=int, default=EXPORTER_PORT,
                     help=f"its exporter's port (default {EXPORTER_PORT})")
    add.add_argument("--wheelhouse", type=Path, metavar="DIR",
                     help="the wheels the node installs from (default "
                          f"{wheelhouse_folder.DEFAULT}, where it exists)")
    wheels = sub.add_parser("wheelhouse", help="build the wheels nodes install from: gpuacct "
                                               "and its dependencies at this host's versions")
    wheels.add_argument("source", type=Path, help="a gpuacct checkout or wheel")
    wheels.add_argument("--into", type=Path, default=wheelhouse_folder.DEFAULT, metavar="DIR",
                        help=f"(default {wheelhouse_folder.DEFAULT})")
    remove = verbs.add_parser("remove", help="take a node out: its key stops working")
    remove.add_argument("name")
    influx = sub.add_parser("influxdb-user", help="make InfluxDB's user gpuacct and its "
                                                  "database, once InfluxDB answers")
    for each in (init, add, remove, influx):
        each.add_argument("--etc", type=Path, default=Path("/etc/gpuacct"), metavar="DIR",
                          help="where the deployment's files are (default /etc/gpuacct)")
    return parser


def _trust(args: argparse.Namespace) -> int:
    etc = Etc(args.etc)
    if args.command == "influxdb-user":
        print(influxdb.make_user(etc.secrets))
        return 0
    if args.command == "init":
        done = init(etc, args.host)
        print(f"made: {', '.join(done.made) or 'nothing'}")
        print(f"kept: {', '.join(done.kept) or 'nothing'}")
        print(f"the web's administrator password is in {etc.secrets / ADMIN_PASSWORD} (root "
              "only)")
        return 0
    if args.verb == "remove":
        node_remove(etc, args.name)
        print(f"{args.name} removed: it can no longer sync, and Prometheus stops scraping it")
        return 0
    if not 1 <= args.port <= 65535:
        raise AdminError(f"--port {args.port}: not a port")
    given = args.wheelhouse is not None
    wheelhouse = args.wheelhouse or wheelhouse_folder.DEFAULT
    if given or wheelhouse.exists():
        wheelhouse_folder.check(wheelhouse)
    else:
        wheelhouse = None
    bundle = node_add(etc, args.name, args.address, args.port, wheelhouse)
    to = "/root/gpuacct-enrol"
    host = f"[{args.address}]" if ":" in args.address else args.address
    print(f"enrolled {args.name}; its bundle: {bundle}")
    if wheelhouse is None:
        print(f"no wheelhouse at {wheelhouse_folder.DEFAULT} (gpuacct-admin wheelhouse): the "
              f"node needs a gpuacct checkout and a package index; from the checkout, as root:"
              f"\n  deploy/install-node.sh --bundle {to}  (after: scp -r {bundle} "
              f"root@{host}:{to})")
        return 0
    print(f"install it on the node, from this host, as root (no package index needed there):"
          f"\n  ssh root@{host} rm -rf {to} && scp -rq {bundle} root@{host}:{to} && "
          f"ssh root@{host} {to}/install-node.sh --bundle {to}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    command = command_or_usage(parser, args)
    if command == "wheelhouse":
        try:
            names = wheelhouse_folder.build(args.source, args.into)
        except AdminError as exc:
            print(f"gpuacct-admin wheelhouse: {exc}", file=sys.stderr)
            return 2
        print(f"{len(names)} wheels in {args.into}, "
              f"{next(n for n in names if n.startswith('gpuacct-'))} among them")
        return 0
    if command in ("init", "node", "influxdb-user"):
        try:
            return _trust(args)
        except AdminError as exc:
            print(f"gpuacct-admin {command}: {exc}", file=sys.stderr)
            return 2
        except OSError as exc:
            print(f"gpuacct-admin {command}: {exc.filename or ''}: {exc.strerror}",
                  file=sys.stderr)
            return 1
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
