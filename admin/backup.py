"""A backup of every store of the control host, consistent store by store while the services
run (SQLite's online backup; `pg_dump` for stores in PostgreSQL), kept as a folder
`gpuacct-<UTC time>` with a manifest; and its restore onto a host whose services are stopped.

A folder is complete or absent (made under a hidden name, renamed last); the newest `keep`
folders are kept. A restore never deletes what it replaces: each store found in place is set
aside beside itself (`<name>.before-restore-<time>`) with its WAL files."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpuacct import __version__
from gpuacct.build import revision
from gpuacct.config import Settings
from gpuacct.store import StoreError, Target, connect, is_url, lease_holder, redacted
from gpuacct.store import backup as sqlite_backup
from gpuacct.store.places import control_stores

MANIFEST = "MANIFEST.json"
FOLDER = re.compile(r"^gpuacct-\d{8}T\d{6}Z$")
# Who holds a store's lease while running: a restore under it would be overwritten.
SERVICE_OF = {"ledger": "gpuacct-billing", "enforcer": "gpuacct-enforcer"}


class AdminError(Exception):
    """What is wrong, in one line for the operator."""


@dataclass(frozen=True)
class Taken:
    folder: Path
    stores: list[str]  # in the backup
    absent: list[str]  # no such store on this host (yet)


def _stamp(now: float) -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _pg_dump(url: str, dest: Path) -> None:
    try:
        done = subprocess.run(["pg_dump", "--format=custom", f"--file={dest}", f"--dbname={url}"],
                              capture_output=True, text=True, timeout=3600, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise AdminError(f"pg_dump of {redacted(url)}: {exc}") from None
    if done.returncode != 0:
        problem = (done.stderr.strip().splitlines() or ["failed"])[0]
        raise AdminError(f"pg_dump of {redacted(url)}: {problem}")


def take(settings: Settings, into: Path, keep: int | None = None,
         now: float | None = None) -> Taken:
    """Every store into a new folder under `into`; then only the newest `keep` folders stay."""
    now = time.time() if now is None else now
    folder = into / f"gpuacct-{_stamp(now)}"
    if folder.exists():
        raise AdminError(f"{folder} exists: one backup a second")
    into.mkdir(mode=0o700, parents=True, exist_ok=True)
    partial = into / f".{folder.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(mode=0o700)
    stores: dict[str, dict[str, Any]] = {}
    absent: list[str] = []
    dumps: dict[str, str] = {}  # a PostgreSQL database's URL: its dump file
    try:
        for name, target in control_stores(settings).items():
            if is_url(target):
                url = str(target)
                if url not in dumps:
                    dumps[url] = f"postgresql-{len(dumps) + 1}.dump"
                    _pg_dump(url, partial / dumps[url])
                stores[name] = {"engine": "postgresql", "file": dumps[url], "from": redacted(url)}
                continue
            if not Path(target).exists():
                absent.append(name)
                continue
            file = f"{name}.sqlite3"
            db = connect(target, readonly=True)
            try:
                sqlite_backup(db, partial / file)
            finally:
                db.close()
            stores[name] = {"engine": "sqlite", "file": file, "from": str(target)}
        if "ledger" not in stores:
            raise AdminError(f"no ledger at {settings.billing.ledger}: nothing worth a backup "
                             "(is this the control host, and its config?)")
        for entry in stores.values():
            entry["sha256"] = _sha256(partial / entry["file"])
        manifest = {"gpuacct": __version__, "revision": revision(), "taken_at": now,
                    "stores": stores}
        (partial / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        for path in partial.iterdir():
            path.chmod(0o600)
        partial.rename(folder)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if keep is not None:
        prune(into, keep)
    return Taken(folder, list(stores), absent)


def prune(into: Path, keep: int) -> list[Path]:
    """The backup folders beyond the newest `keep`, removed; nothing else in `into` is."""
    folders = sorted(p for p in into.iterdir() if p.is_dir() and FOLDER.match(p.name))
    gone = folders[:-keep] if keep > 0 else folders
    for path in gone:
        shutil.rmtree(path)
    return gone


def _manifest(folder: Path) -> dict[str, Any]:
    try:
        manifest: dict[str, Any] = json.loads((folder / MANIFEST).read_text())
        stores = manifest["stores"]
        if not isinstance(stores, dict) or not all(
                isinstance(e, dict) and isinstance(e.get("file"), str) for e in stores.values()):
            raise ValueError("stores is not a map of files")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise AdminError(f"{folder} is not a gpuacct backup: {MANIFEST}: {exc}") from None
    return manifest


def _held(name: str, target: Target, now: float) -> str | None:
    """Who holds the store's lease now, if it is a file here with a lease."""
    if is_url(target) or not Path(target).exists():
        return None
    try:
        db = connect(target, readonly=True, timeout=5.0)
    except StoreError:
        return None  # unreadable: it is replaced, and set aside
    try:
        return lease_holder(db, now) if db.has_table("lease") else None
    finally:
        db.close()


def _set_aside(dest: Path, stamp: str) -> Path | None:
    aside = None
    for suffix in ("", "-wal", "-shm"):
        path = dest.with_name(dest.name + suffix)
        if path.exists():
            moved = dest.with_name(f"{dest.name}.before-restore-{stamp}{suffix}")
            path.rename(moved)
            aside = aside or moved
    return aside


def restore(settings: Settings, folder: Path, now: float | None = None) -> list[str]:
    """The backup's SQLite stores put where this host's config places them, each checked
    against its digest first; what was there set aside. Refused while a service holds a
    store's lease, or for a store in PostgreSQL (pg_restore restores those)."""
    now = time.time() if now is None else now
    manifest = _manifest(folder)
    targets = control_stores(settings)
    for name, service in SERVICE_OF.items():
        holder = _held(name, targets[name], now)
        if holder is not None:
            raise AdminError(f"{service} ({holder}) holds the {name}'s lease: stop it on "
                             "every host before restoring")
    plan: list[tuple[str, Path, Path]] = []
    for name, entry in manifest["stores"].items():
        if name not in targets:
            raise AdminError(f"the backup holds a store this gpuacct does not know: {name}")
        source = folder / entry["file"]
        if entry.get("engine") == "postgresql" or is_url(targets[name]):
            raise AdminError(f"{name} is in PostgreSQL: restore it with `pg_restore --clean "
                             f"--if-exists --dbname=URL {source}`, then run this for the rest")
        if not source.is_file() or _sha256(source) != entry.get("sha256"):
            raise AdminError(f"{source} is missing or not what was backed up (its digest "
                             "differs): this backup cannot be restored")
        plan.append((name, source, Path(targets[name])))
    stamp = _stamp(now)
    for _name, source, dest in plan:
        dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        partial = dest.with_name(f".{dest.name}.restoring")
        shutil.copyfile(source, partial)
        # Owned as the folder it goes into (the services' user), readable by nobody else.
        folder_stat = dest.parent.stat()
        os.chown(partial, folder_stat.st_uid, folder_stat.st_gid)
        partial.chmod(0o600)
        _set_aside(dest, stamp)
        partial.rename(dest)
    return [name for name, _, _ in plan]
