"""SQLite persistence for container records, image tags and engine metadata.

Every statement runs on one dedicated worker thread, so the reactor thread
never waits on the disk, and the single thread serialises the writes. The
engine keeps its own in-memory view and uses the store to make each change
durable before the API answers.
"""

import json
import sqlite3
from typing import Any, Callable, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

T = TypeVar("T")

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS containers (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    record TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS tags (
    ref TEXT PRIMARY KEY,
    digest TEXT NOT NULL
);
"""


class Store:
    """
    The engine's SQLite database file.

    @ivar path: the database file.
    """

    log = Logger()

    def __init__(self, path: str, reactor: Any) -> None:
        self.path = path
        self._reactor = reactor
        self._pool = ThreadPool(minthreads=1, maxthreads=1, name="emiso-store")
        self._connection: sqlite3.Connection | None = None

    def open(self) -> Deferred[None]:
        """
        Start the worker thread, open the database and create the tables.
        """
        self._pool.start()
        return self._run(self._open)

    def close(self) -> Deferred[None]:
        """
        Close the database and stop the worker thread.
        """
        d = self._run(self._close)
        d.addBoth(self._stop_pool)
        return d

    def load_containers(self) -> Deferred[list[dict]]:
        """
        Read every container record.
        """
        return self._run(self._load_containers)

    def save_container(self, record: dict) -> Deferred[None]:
        """
        Insert or replace one container record and commit.

        @param record: a JSON-serialisable dict with at least C{id} and
            C{name}.
        """
        text = json.dumps(record, sort_keys=True)
        return self._run(self._save_container, record["id"], record["name"], text)

    def delete_container(self, container_id: str) -> Deferred[None]:
        """
        Delete one container record and commit.
        """
        return self._run(self._execute, "DELETE FROM containers WHERE id = ?", (container_id,))

    def load_tags(self) -> Deferred[dict[str, str]]:
        """
        Read the image tags stored in the database, as reference to digest.
        """
        return self._run(self._load_tags)

    def set_tag(self, ref: str, digest: str) -> Deferred[None]:
        """
        Point an image reference at an image digest and commit.
        """
        return self._run(
            self._execute,
            "INSERT OR REPLACE INTO tags (ref, digest) VALUES (?, ?)",
            (ref, digest),
        )

    def delete_tag(self, ref: str) -> Deferred[None]:
        """
        Remove an image reference and commit.
        """
        return self._run(self._execute, "DELETE FROM tags WHERE ref = ?", (ref,))

    def get_meta(self, key: str) -> Deferred[str | None]:
        """
        Read one engine metadata value.
        """
        return self._run(self._get_meta, key)

    def set_meta(self, key: str, value: str) -> Deferred[None]:
        """
        Store one engine metadata value and commit.
        """
        return self._run(
            self._execute,
            "INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
            (key, value),
        )

    def _run(self, function: Callable[..., T], *args: Any) -> Deferred[T]:
        return deferToThreadPool(self._reactor, self._pool, function, *args)

    def _stop_pool(self, result: T) -> T:
        self._pool.stop()
        return result

    def _open(self) -> None:
        connection = sqlite3.connect(self.path, isolation_level=None)
        # With WAL and synchronous=FULL, SQLite syncs the log to the disk
        # before a commit returns, so a committed change survives a power loss.
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=FULL")
        connection.execute("PRAGMA foreign_keys=ON")
        connection.executescript(_SCHEMA)
        connection.execute(
            "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema', ?)",
            (str(SCHEMA_VERSION),),
        )
        self._connection = connection

    def _close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _db(self) -> sqlite3.Connection:
        if self._connection is None:
            raise RuntimeError(f"store {self.path} is not open")
        return self._connection

    def _execute(self, statement: str, parameters: tuple) -> None:
        db = self._db()
        with db:
            db.execute("BEGIN IMMEDIATE")
            db.execute(statement, parameters)

    def _save_container(self, container_id: str, name: str, text: str) -> None:
        self._execute(
            "INSERT OR REPLACE INTO containers (id, name, record) VALUES (?, ?, ?)",
            (container_id, name, text),
        )

    def _load_containers(self) -> list[dict]:
        rows = self._db().execute("SELECT record FROM containers ORDER BY id")
        return [json.loads(text) for (text,) in rows]

    def _load_tags(self) -> dict[str, str]:
        rows = self._db().execute("SELECT ref, digest FROM tags")
        return dict(rows.fetchall())

    def _get_meta(self, key: str) -> str | None:
        row = self._db().execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]
