"""What a store raises, whichever engine it runs on: the engines' own errors end here."""

from __future__ import annotations


class StoreError(Exception):
    """The store could not do what was asked; nothing of the transaction was kept."""


class IntegrityError(StoreError):
    """A constraint refused a write (a key used twice, a missing reference)."""


class ReadOnlyError(StoreError):
    """A write on a connection opened read-only."""


class SchemaError(StoreError):
    """The database is of a schema this code cannot use (newer, or not yet migrated), or a
    store file others may read."""


class BackupError(StoreError):
    """The copy could not be made; nothing was left behind."""
