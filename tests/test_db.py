"""Migrations: applied in order, recorded, atomic; a fresh and an upgraded database end the same."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiosqlite
import pytest

from bot.db import Migration, connect, load_migrations, migrate, open_database, transaction
from common.errors import ConfigError
from tests.conftest import REPO


async def schema(db: aiosqlite.Connection) -> list[tuple[str, str, str]]:
    async with db.execute(
        "SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY type, name"
    ) as cur:
        return [tuple(row) for row in await cur.fetchall()]


async def test_fresh_database_is_wal_and_fully_migrated(tmp_path: Path) -> None:
    db = await open_database(tmp_path / "easel.sqlite3")
    try:
        async with db.execute("PRAGMA journal_mode") as cur:
            assert (await cur.fetchone())[0] == "wal"
        async with db.execute("SELECT version FROM schema_migrations ORDER BY version") as cur:
            assert [r[0] for r in await cur.fetchall()] == [m.version for m in load_migrations()]
        names = {row[1] for row in await schema(db)}
        assert {"checkpoints", "checkpoint_tags", "hash_cache", "schema_migrations"} <= names
    finally:
        await db.close()


@pytest.mark.parametrize("applied_first", range(len(load_migrations()) + 1))
async def test_upgraded_database_matches_fresh_one(tmp_path: Path, applied_first: int) -> None:
    migrations = load_migrations()
    fresh = await open_database(tmp_path / "fresh.sqlite3")
    old = await connect(tmp_path / "old.sqlite3")
    try:
        await migrate(old, migrations[:applied_first])  # a database from an older release
        assert await migrate(old, migrations) == [m.version for m in migrations[applied_first:]]
        assert await migrate(old, migrations) == []  # nothing runs twice
        assert await schema(old) == await schema(fresh)
    finally:
        await fresh.close()
        await old.close()


async def test_failing_migration_changes_nothing(tmp_path: Path) -> None:
    db = await connect(tmp_path / "db.sqlite3")
    try:
        good = Migration(1, "0001_a", "CREATE TABLE a (x INTEGER);")
        bad = Migration(2, "0002_b", "CREATE TABLE b (x INTEGER); INSERT INTO nowhere VALUES (1);")
        with pytest.raises(ConfigError, match=r"migration 0002_b failed"):
            await migrate(db, [good, bad])
        names = {row[1] for row in await schema(db)}
        assert "a" in names and "b" not in names
        async with db.execute("SELECT version FROM schema_migrations") as cur:
            assert [r[0] for r in await cur.fetchall()] == [1]
    finally:
        await db.close()


async def test_database_newer_than_code_is_refused(tmp_path: Path) -> None:
    db = await connect(tmp_path / "db.sqlite3")
    try:
        await migrate(
            db, [Migration(1, "0001_a", "CREATE TABLE a (x);"), Migration(2, "0002_b", "CREATE TABLE b (x);")]
        )
        with pytest.raises(ConfigError, match=r"migration 0002.*upgrade Easel"):
            await migrate(db, [Migration(1, "0001_a", "CREATE TABLE a (x);")])
    finally:
        await db.close()


def test_migration_files_are_well_named(tmp_path: Path) -> None:
    (tmp_path / "0001_ok.sql").write_text("SELECT 1;")
    (tmp_path / "two.sql").write_text("SELECT 1;")
    with pytest.raises(ConfigError, match=r"NNNN_name\.sql"):
        load_migrations(tmp_path)


async def test_writers_never_share_a_transaction(tmp_path: Path) -> None:
    """A fails and rolls back while B wants to write: B's row must survive, and A's must not."""
    db = await open_database(tmp_path / "easel.sqlite3")
    inside, release = asyncio.Event(), asyncio.Event()
    sql = "INSERT INTO guild_settings (guild_id, channel_id, settings_json, updated_at, updated_by) VALUES (?, '', '{}', 0, '')"

    async def a() -> None:
        async with transaction(db):
            await db.execute(sql, ("a",))
            inside.set()
            await release.wait()
            raise RuntimeError("A fails after B asked to write")

    async def b() -> None:
        await inside.wait()
        writing = asyncio.create_task(_write(db, sql, "b"))
        await asyncio.sleep(0)  # B is now waiting for A's transaction to end, not joining it
        release.set()
        await writing

    try:
        results = await asyncio.gather(a(), b(), return_exceptions=True)
        assert isinstance(results[0], RuntimeError) and results[1] is None
        async with db.execute("SELECT guild_id FROM guild_settings ORDER BY guild_id") as cur:
            assert [row[0] for row in await cur.fetchall()] == ["b"]
    finally:
        await db.close()


async def _write(db, sql: str, value: str) -> None:
    async with transaction(db):
        await db.execute(sql, (value,))


def test_every_write_goes_through_the_transaction_helper() -> None:
    """sqlite3's implicit transactions span awaits; a commit outside transaction() could publish another's work."""
    offenders = []
    for path in (REPO / "bot").rglob("*.py"):
        if path.name == "db.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if ".commit()" in line or ".rollback()" in line:
                offenders.append(f"{path.relative_to(REPO)}:{number}")
    assert offenders == []


def test_first_start_from_several_processes_at_once_migrates_once(tmp_path: Path) -> None:
    """The bot and the CLI started together on a fresh data folder: each waits for the other's
    migrations under SQLite's write lock, then finds them done ("already exists" and "duplicate
    column" came from reading the applied set outside the lock)."""
    import subprocess
    import sys

    path = tmp_path / "easel.sqlite3"
    code = (
        "import asyncio, sys; from bot.db import open_database\n"
        "async def main():\n    db = await open_database(__import__('pathlib').Path(sys.argv[1])); await db.close()\n"
        "asyncio.run(main())"
    )
    for _ in range(3):  # fresh each time: the race is at the first start
        path.unlink(missing_ok=True)
        procs = [
            subprocess.Popen([sys.executable, "-c", code, str(path)], cwd=REPO, stderr=subprocess.PIPE, text=True)
            for _ in range(6)
        ]
        errors = [p.communicate(timeout=60)[1] for p in procs]
        assert [p.returncode for p in procs] == [0] * 6, errors
    async def versions() -> list[int]:
        db = await connect(path)
        try:
            async with db.execute("SELECT version FROM schema_migrations ORDER BY version") as cur:
                return [r[0] for r in await cur.fetchall()]
        finally:
            await db.close()

    assert asyncio.run(versions()) == [m.version for m in load_migrations()]
