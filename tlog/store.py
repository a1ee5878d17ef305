"""SQLite storage of the log: entries, complete-subtree hashes, signed checkpoints.

WAL mode with synchronous=FULL: a commit returns only after the WAL is on disk, so an append
acknowledged after `write_batch` survives kill -9 and power loss; readers never block the writer.
One `write_batch` is one transaction holding entries, their tree nodes and the checkpoint that
covers them, so the tables can never disagree about the tree size after a crash.

Node `(level, index)` is stored under the integer key `level << 48 | index` (leaves are level 0),
so each level is one contiguous run of an integer primary key.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

from tlog.backend import LogError
from tlog.proofs import NodeID
from verifier.errors import UnusableInput

SCHEMA_VERSION = "1"
_LEVEL_SHIFT = 48
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS entries (idx INTEGER PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS nodes (id INTEGER PRIMARY KEY, hash BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS checkpoints (size INTEGER PRIMARY KEY, note TEXT NOT NULL);
"""
_TABLES = {"meta", "entries", "nodes", "checkpoints"}  # what _SCHEMA creates


def node_key(node: NodeID) -> int:
    return node[0] << _LEVEL_SHIFT | node[1]


def key_node(key: int) -> NodeID:
    return key >> _LEVEL_SHIFT, key & ((1 << _LEVEL_SHIFT) - 1)


def _connect(path: Path, readonly: bool) -> sqlite3.Connection:
    uri = f"{path.resolve().as_uri()}?mode={'ro' if readonly else 'rwc'}"
    conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False, timeout=30)
    conn.execute("PRAGMA busy_timeout = 30000")
    return conn


class Store:
    """The database. Writes go through one connection (callers serialize them); each reading
    thread gets its own connection, since WAL readers see the last commit without locking."""

    def __init__(self, path: str | os.PathLike[str], *, readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        if self.path.exists() and not self.path.is_file():
            raise UnusableInput(f"{self.path} is not a file; --db names the log's SQLite database file")
        if readonly and not self.path.exists():
            raise UnusableInput(f"no log database at {self.path}")
        try:
            self._writer = _connect(self.path, readonly)
        except sqlite3.Error as exc:
            raise UnusableInput(f"cannot open log database {self.path}: {exc}") from None
        try:
            self._check_schema()
            if not readonly:
                mode = self._writer.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if mode != "wal":
                    raise LogError(f"{self.path}: SQLite refused WAL mode (got {mode})")
                self._writer.execute("PRAGMA synchronous = FULL")
                self._writer.executescript(_SCHEMA)
        except sqlite3.OperationalError as exc:  # unreadable, locked, read-only folder
            self._writer.close()
            raise UnusableInput(f"cannot open log database {self.path}: {exc}") from None
        except sqlite3.Error as exc:  # not SQLite at all, or damaged
            self._writer.close()
            raise UnusableInput(f"{self.path} is not a log database ({exc})") from None
        except BaseException:
            self._writer.close()
            raise
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()

    def _check_schema(self) -> None:
        """Refuse a file that is not SQLite, or a SQLite database some other program made (its tables
        must not gain ours), or a log of another schema version. A new, empty database passes."""
        tables = {row[0] for row in self._writer.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        if not tables and not self.readonly:
            return
        if not _TABLES <= tables:
            raise UnusableInput(f"{self.path} is a SQLite database but not an aaudit log (tables: "
                                f"{', '.join(sorted(tables)) or 'none'})")
        row = self._writer.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
        if row is not None and row[0] != SCHEMA_VERSION:
            raise UnusableInput(f"{self.path} is a log of schema version {row[0]!r}; this aaudit reads "
                                f"version {SCHEMA_VERSION}")

    def _reader(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = _connect(self.path, readonly=True)
            with self._readers_lock:
                self._readers.append(conn)
            self._local.conn = conn
        return conn

    def close(self) -> None:
        with self._readers_lock:
            for conn in self._readers:
                conn.close()
            self._readers.clear()
        self._writer.close()

    # -- metadata ----------------------------------------------------------------------------
    def meta(self, key: str) -> str | None:
        row = self._writer.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def init(self, origin: str, empty_checkpoint: str) -> None:
        """Stamp a new database with its origin and the signed checkpoint of the empty tree."""
        with self._transaction() as c:
            c.executemany("INSERT INTO meta VALUES (?, ?)", [("origin", origin), ("schema", SCHEMA_VERSION)])
            c.execute("INSERT INTO checkpoints VALUES (0, ?)", (empty_checkpoint,))

    # -- reads -------------------------------------------------------------------------------
    def latest_checkpoint(self) -> tuple[int, str] | None:
        row = self._writer.execute("SELECT size, note FROM checkpoints ORDER BY size DESC LIMIT 1").fetchone()
        return None if row is None else (row[0], row[1])

    def entry_count(self) -> int:
        row = self._writer.execute("SELECT MAX(idx) FROM entries").fetchone()
        return 0 if row[0] is None else row[0] + 1

    def checkpoint_at(self, size: int) -> str | None:
        row = self._reader().execute("SELECT note FROM checkpoints WHERE size = ?", (size,)).fetchone()
        return None if row is None else row[0]

    def entry(self, index: int) -> bytes | None:
        row = self._reader().execute("SELECT data FROM entries WHERE idx = ?", (index,)).fetchone()
        return None if row is None else bytes(row[0])

    def nodes(self, ids: Sequence[NodeID]) -> dict[NodeID, bytes]:
        if not ids:
            return {}
        keys = [node_key(n) for n in ids]
        rows = self._reader().execute(
            f"SELECT id, hash FROM nodes WHERE id IN ({','.join('?' * len(keys))})", keys).fetchall()
        return {key_node(k): bytes(h) for k, h in rows}

    def iter_entries(self) -> Iterator[tuple[int, bytes]]:
        return self._reader().execute("SELECT idx, data FROM entries ORDER BY idx")

    def iter_level(self, level: int) -> Iterator[tuple[int, bytes]]:
        """(index, hash) of one level's stored nodes, in order."""
        lo = level << _LEVEL_SHIFT
        return self._reader().execute("SELECT id - ?, hash FROM nodes WHERE id >= ? AND id < ? ORDER BY id",
                                      (lo, lo, lo + (1 << _LEVEL_SHIFT)))

    def node_count(self) -> int:
        return self._reader().execute("SELECT COUNT(*) FROM nodes").fetchone()[0]

    def iter_checkpoints(self) -> Iterator[tuple[int, str]]:
        return self._reader().execute("SELECT size, note FROM checkpoints ORDER BY size")

    # -- the one write ------------------------------------------------------------------------
    def write_batch(self, start: int, entries: Sequence[bytes], nodes: Sequence[tuple[NodeID, bytes]],
                    size: int, checkpoint: str) -> None:
        """Commit entries start.., their completed nodes and the checkpoint of `size`, atomically."""
        try:
            with self._transaction() as c:
                c.executemany("INSERT INTO entries VALUES (?, ?)", zip(range(start, start + len(entries)), entries))
                c.executemany("INSERT INTO nodes VALUES (?, ?)", ((node_key(n), h) for n, h in nodes))
                c.execute("INSERT INTO checkpoints VALUES (?, ?)", (size, checkpoint))
        except sqlite3.Error as exc:
            raise LogError(f"could not store {len(entries)} entr{'y' if len(entries) == 1 else 'ies'}: {exc}") from None

    def _transaction(self) -> "_Txn":
        return _Txn(self._writer)


class _Txn:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any error (autocommit connections)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.conn.execute("COMMIT")
        else:
            self.conn.execute("ROLLBACK")
