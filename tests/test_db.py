"""Migrations: applied in order, recorded, atomic; a fresh and an upgraded database end the same."""

from __future__ import annotations

from pathlib import Path

import aiosqlite
import pytest

from bot.db import Migration, connect, load_migrations, migrate, open_database
from bot.errors import ConfigError


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
