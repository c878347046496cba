"""SQLite through aiosqlite: connection set-up (WAL), checks of the file, migrations, and transactions.

Every service shares one connection (SQLite allows one writer; WAL lets reads go on beside it).
sqlite3 opens a transaction implicitly at the first write and keeps it until `commit`, so two
coroutines writing through one connection would share a transaction: one's commit would publish the
other's half-done work, one's rollback would drop the other's. Every write therefore goes through
`transaction(db)`, which serialises writers on the connection and commits or rolls back as a unit;
tests/test_db.py checks that no code commits outside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sqlite3
import time
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiosqlite

from common.errors import ConfigError

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def load_migrations(folder: Path = MIGRATIONS_DIR) -> list[Migration]:
    migrations: dict[int, Migration] = {}
    for path in sorted(folder.glob("*.sql")):
        match = _NAME.match(path.name)
        if match is None:
            raise ConfigError(f"migration file {path.name!r} is not named NNNN_name.sql")
        version = int(match[1])
        if version in migrations:
            raise ConfigError(f"two migrations share version {version:04d}")
        migrations[version] = Migration(version, path.stem, path.read_text(encoding="utf-8"))
    return [migrations[v] for v in sorted(migrations)]


_WRITERS: weakref.WeakKeyDictionary[aiosqlite.Connection, asyncio.Lock] = weakref.WeakKeyDictionary()


@contextlib.asynccontextmanager
async def transaction(db: aiosqlite.Connection) -> AsyncIterator[aiosqlite.Connection]:
    """One unit of writes: no other writer on this connection meanwhile; committed, or rolled back on error."""
    lock = _WRITERS.setdefault(db, asyncio.Lock())
    async with lock:
        try:
            yield db
            await db.commit()
        except BaseException:
            if db.in_transaction:
                await db.rollback()
            raise


BUSY_SECONDS = 30.0


async def connect(path: Path) -> aiosqlite.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Another process (the bot and the CLI, several CLIs) may hold the write lock for a whole first
    # start's migrations: waited for up to BUSY_SECONDS. Switching a new database to WAL while another
    # process does the same can be refused at once, without SQLite's busy handler ("database is
    # locked" when six started together): tried again, with a growing pause, within the same time.
    deadline, pause = time.monotonic() + BUSY_SECONDS, 0.02
    while True:
        db = await aiosqlite.connect(path, timeout=BUSY_SECONDS)
        try:
            await db.execute(f"PRAGMA busy_timeout={int(BUSY_SECONDS * 1000)}")
            await db.execute("PRAGMA journal_mode=WAL")
            await db.execute("PRAGMA foreign_keys=ON")
        except sqlite3.OperationalError as e:
            await db.close()  # aiosqlite's thread would otherwise keep the process alive
            if "locked" not in str(e) or time.monotonic() + pause > deadline:
                raise
            await asyncio.sleep(pause)
            pause = min(pause * 2, 1.0)
            continue
        except BaseException:
            await db.close()
            raise
        db.row_factory = aiosqlite.Row
        return db


async def migrate(db: aiosqlite.Connection, migrations: list[Migration] | None = None) -> list[int]:
    """Apply pending migrations in order, each whole or not at all, under SQLite's write lock; return
    the versions applied. The lock is taken before the applied set is read, so a second process starting
    on the same fresh database (the bot and the CLI at once) waits for the first, then finds the work
    done, instead of applying a migration twice."""
    migrations = load_migrations() if migrations is None else migrations
    await db.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
    )
    await db.commit()
    await db.execute("BEGIN IMMEDIATE")  # waits up to the busy timeout for another writer
    try:
        async with db.execute("SELECT version FROM schema_migrations") as cur:
            applied = {row[0] for row in await cur.fetchall()}
        known = {m.version for m in migrations}
        if applied - known:
            newest = max(applied - known)
            raise ConfigError(
                f"the database has migration {newest:04d}, which this version of Easel does not know; upgrade Easel"
            )
        done = []
        for m in migrations:
            if m.version in applied:
                continue
            await db.execute("SAVEPOINT migration")  # a failing one changes nothing; those before it stay
            try:
                for statement in _statements(m.sql):
                    await db.execute(statement)
                await db.execute(
                    "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
                    (m.version, m.name, time.time()),
                )
            except sqlite3.Error as e:
                await db.execute("ROLLBACK TO migration")
                await db.execute("RELEASE migration")
                await db.commit()
                raise ConfigError(f"migration {m.name} failed: {e}") from e
            await db.execute("RELEASE migration")
            done.append(m.version)
        await db.commit()
    except BaseException:
        if db.in_transaction:
            await db.rollback()
        raise
    return done


def _statements(sql: str) -> list[str]:
    """A migration's statements, each ended where SQLite itself would end it."""
    statements, current = [], ""
    for line in sql.splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            statements.append(current)
            current = ""
    if _COMMENTS.sub("", current).strip():
        statements.append(current)  # unfinished: executing it says what is wrong
    return statements


_COMMENTS = re.compile(r"--[^\n]*|/\*.*?\*/", re.DOTALL)


async def open_database(path: Path) -> aiosqlite.Connection:
    """The bot's database, migrated. A file that is not a healthy SQLite database is refused with one
    line naming it and what to do, before anything is written to it."""
    await asyncio.to_thread(check_database_file, path)
    try:
        db = await connect(path)
    except sqlite3.Error as e:
        raise ConfigError(f"cannot open the database {path}: {e}") from None
    try:
        await migrate(db)
        await _check_tables(db, path)
    except BaseException as e:
        await db.close()
        if isinstance(e, sqlite3.Error):
            raise ConfigError(f"the database {path} cannot be used: {e}; {_WHAT_TO_DO}") from None
        raise
    return db


_WHAT_TO_DO = "move it aside (a new, empty one is then created) or restore a backup"


def check_database_file(path: Path) -> None:
    """Refuse a directory, an unreadable file, or one SQLite finds damaged, opening it read-only."""
    if not path.exists():
        return
    if path.is_dir():
        raise ConfigError(f"the database path {path} is a directory, not a file; {_WHAT_TO_DO}")
    try:
        conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as e:
        raise ConfigError(f"cannot open the database {path}: {e}") from None
    try:
        problems = [row[0] for row in conn.execute("PRAGMA quick_check")]
    except sqlite3.Error as e:
        raise ConfigError(f"{path} is not a usable SQLite database ({e}); {_WHAT_TO_DO}") from None
    finally:
        conn.close()
    if problems != ["ok"]:
        raise ConfigError(f"the database {path} is damaged ({problems[0]}); {_WHAT_TO_DO}")


async def _check_tables(db: aiosqlite.Connection, path: Path) -> None:
    """Every table the applied migrations create must be there (a hand-edited file may lack one)."""
    async with db.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')") as cur:
        present = {row[0] for row in await cur.fetchall()}
    for migration in load_migrations():
        for table in _CREATE_TABLE.findall(migration.sql):
            if table not in present:
                raise ConfigError(
                    f"the database {path} has no {table} table although migration {migration.name} was "
                    f"applied; {_WHAT_TO_DO}"
                )


_CREATE_TABLE = re.compile(r"CREATE\s+(?:VIRTUAL\s+)?TABLE\s+(?:IF\s+NOT\s+EXISTS\s+)?[\"`]?(\w+)", re.IGNORECASE)
