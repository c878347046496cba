"""SQLite through aiosqlite: connection set-up (WAL) and the migration runner."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

import aiosqlite

from bot.errors import ConfigError

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


async def connect(path: Path) -> aiosqlite.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    db = await aiosqlite.connect(path)
    await db.execute("PRAGMA journal_mode=WAL")
    await db.execute("PRAGMA foreign_keys=ON")
    await db.execute("PRAGMA busy_timeout=5000")
    db.row_factory = aiosqlite.Row
    return db


async def migrate(db: aiosqlite.Connection, migrations: list[Migration] | None = None) -> list[int]:
    """Apply pending migrations in order, each in its own transaction; return the versions applied."""
    migrations = load_migrations() if migrations is None else migrations
    await db.execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
    )
    await db.commit()
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
        script = (
            f"BEGIN;\n{m.sql}\n;"
            f"INSERT INTO schema_migrations (version, name, applied_at) VALUES ({m.version}, '{m.name}', {time.time()});\n"
            "COMMIT;"
        )
        try:
            await db.executescript(script)
        except Exception as e:
            if db.in_transaction:
                await db.rollback()
            raise ConfigError(f"migration {m.name} failed: {e}") from e
        done.append(m.version)
    return done


async def open_database(path: Path) -> aiosqlite.Connection:
    db = await connect(path)
    try:
        await migrate(db)
    except BaseException:
        await db.close()
        raise
    return db
