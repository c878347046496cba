"""One parameters record from the front end to the pipeline: checked by name and type, stored as one
JSON column (older jobs folded into it by their migration), read back across versions."""

from __future__ import annotations

import json
from dataclasses import MISSING, fields
from pathlib import Path

import pytest

from bot.db import connect, load_migrations, migrate
from bot.generation.store import JobRecord
from common.errors import EaselError
from common.parameters import Parameters
from common.protocol import JobPart, LoadRequest, RunBatch, decode, encode

LOAD = LoadRequest("/m/a.safetensors", "a", "sd1", "SD1.x", "safetensors", "sd1")


def test_values_are_checked_by_name_and_type_over_the_defaults() -> None:
    base = Parameters(negative="blurry", steps=30)
    asked = Parameters.of({"prompt": "a fox", "cfg": 5, "cfg_rescale": 0.7}, base)
    assert (asked.prompt, asked.negative, asked.steps, asked.cfg, asked.cfg_rescale) == ("a fox", "blurry", 30, 5.0, 0.7)
    with pytest.raises(EaselError, match=r"^cfg_rescal is not a generation parameter$"):
        Parameters.of({"cfg_rescal": 0.7})
    with pytest.raises(EaselError, match=r"^steps: input should be a valid integer"):
        Parameters.of({"steps": "many"})


def test_a_stored_record_reads_back_across_versions() -> None:
    asked = Parameters(prompt="a fox", width=512, height=768, seed=7, hires_scale=2.0, only_masked=True)
    assert Parameters.from_json(asked.to_json()) == asked
    newer = json.loads(asked.to_json()) | {"an_option_from_a_later_version": 1}
    assert Parameters.from_json(json.dumps(newer)) == asked  # a newer writer's keys are left out
    older = {"prompt": "a fox", "steps": 12}
    assert Parameters.from_json(json.dumps(older)) == Parameters(prompt="a fox", steps=12)  # the rest: defaults


def test_the_record_crosses_to_the_worker_whole() -> None:
    batch = RunBatch.of("b", LOAD, (JobPart("j", "a fox", "", (1,)),), 64, 96, 4, cfg_rescale=0.5, preview_every=2)
    back = decode(encode(batch))
    assert back == batch and back.parameters.cfg_rescale == 0.5 and (back.width, back.height) == (64, 96)


async def test_jobs_recorded_before_the_record_are_folded_into_it(tmp_path: Path) -> None:
    """A database from before migration 0016 keeps every job reproducible: the columns it had become
    the record, with A1111's defaults where a column was empty, the noise as it was drawn then (CPU
    generators: migration 0017) and braces in the prompt as text (migration 0019)."""
    migrations = load_migrations()
    before = [m for m in migrations if m.version < 16]
    db = await connect(tmp_path / "old.sqlite3")
    try:
        await migrate(db, before)
        common = (
            "INSERT INTO jobs (id, state, requester_id, checkpoint_name, checkpoint_sha256, prompt, negative, width, "
            "height, steps, cfg, sampler, schedule, clip_skip, seeds_json, created_at, init_image_sha256, "
            "denoising_strength, resize_mode, mask_sha256, mask_blur, hires_json, inpaint_json, cfg_rescale, "
            "vae_sha256, distilled_cfg) VALUES (?, 'done', 'u', 'a', 'aa', ?, 'blurry', 512, 768, 25, 6.5, 'Euler a', "
            "'Automatic', 2, ?, 0, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        )
        await db.execute(common, ("plain", "a fox", "[11, 12]", None, None, None, None, None, None, None, None, None, None))
        inpaint = '{"masked_content": "fill", "only_masked": true, "padding": 48}'
        hires = '{"scale": 2.0, "steps": 5, "denoise": 0.4, "upscaler": "Lanczos"}'
        await db.execute(
            common, ("full", "a cat", "[3]", "p" * 64, 0.6, "fill", "m" * 64, 8, hires, inpaint, 0.7, "v" * 64, 0.0)
        )
        await db.commit()
        await migrate(db, migrations)
        rows = {}
        async with db.execute("SELECT * FROM jobs") as cur:
            cur.row_factory = None
            names = [d[0] for d in cur.description]
            for values in await cur.fetchall():
                rows[values[0]] = dict(zip(names, values, strict=True))
        plain, full = JobRecord(rows["plain"]).parameters, JobRecord(rows["full"]).parameters
    finally:
        await db.close()
    assert plain == Parameters(
        prompt="a fox", negative="blurry", width=512, height=768, steps=25, cfg=6.5, sampler="Euler a",
        schedule="Automatic", seed=11, count=2, clip_skip=2, rng="CPU", dynamic=False,
    )  # fmt: skip
    assert full == Parameters(
        prompt="a cat", negative="blurry", width=512, height=768, steps=25, cfg=6.5, sampler="Euler a",
        schedule="Automatic", seed=3, count=1, clip_skip=2, init_image="p" * 64, strength=0.6, resize_mode="fill",
        mask_image="m" * 64, mask_blur=8, masked_content="fill", only_masked=True, mask_padding=48, hires_scale=2.0,
        hires_steps=5, hires_denoise=0.4, hires_upscaler="Lanczos", cfg_rescale=0.7, vae="v" * 64, distilled_cfg=0.0,
        rng="CPU", dynamic=False,
    )  # fmt: skip


async def migrated_records(tmp_path: Path, before: int, records: dict[str, str]) -> dict[str, Parameters]:
    """Jobs stored with these parameters records by a database at migrations below `before`, read
    back after every migration."""
    migrations = load_migrations()
    db = await connect(tmp_path / "old.sqlite3")
    try:
        await migrate(db, [m for m in migrations if m.version < before])
        insert = (
            "INSERT INTO jobs (id, state, requester_id, checkpoint_name, checkpoint_sha256, prompt, negative, width, "
            "height, steps, cfg, sampler, schedule, clip_skip, seeds_json, created_at, parameters_json) "
            "VALUES (?, 'done', 'u', 'a', 'aa', 'a fox', '', 64, 64, 4, 7.0, 'Euler', 'Automatic', 1, '[1]', 0, ?)"
        )
        await db.executemany(insert, list(records.items()))
        await db.commit()
        await migrate(db, migrations)
        async with db.execute("SELECT id, parameters_json FROM jobs ORDER BY id") as cur:
            return {row[0]: Parameters.from_json(row[1]) for row in await cur.fetchall()}
    finally:
        await db.close()


async def test_jobs_recorded_before_the_noise_source_keep_drawing_their_noise_on_the_cpu(tmp_path: Path) -> None:
    """Their reruns (Upscale, Vary, More: the same seed) keep the pictures' composition; a job that
    recorded its source keeps it."""
    records = {
        "before": Parameters(prompt="a fox", seed=1).to_json().replace(',"rng":"GPU"', ""),
        "chosen": Parameters(prompt="a fox", seed=1, rng="NV").to_json(),
    }
    sources = {key: p.rng for key, p in (await migrated_records(tmp_path, 17, records)).items()}
    assert sources == {"before": "CPU", "chosen": "NV"}


async def test_jobs_recorded_before_dynamic_prompts_keep_their_braces_as_text(tmp_path: Path) -> None:
    """Migration 0019: a rerun of an older job draws the prompt it drew then; newer jobs expand theirs."""
    records = {
        "before": Parameters(prompt="a {red|blue} fox", seed=1).to_json().replace(',"dynamic":true', ""),
        "after": Parameters(prompt="a {red|blue} fox", seed=1).to_json(),
    }
    dynamic = {key: p.dynamic for key, p in (await migrated_records(tmp_path, 19, records)).items()}
    assert dynamic == {"before": False, "after": True}


def test_every_field_has_a_default() -> None:
    """A record from any older writer reads back: no field may be required."""
    assert Parameters() == Parameters.from_json("{}")
    assert [f.name for f in fields(Parameters) if f.default is MISSING and f.default_factory is MISSING] == []


def test_a_parameter_with_its_own_infotext_key_is_written_only_when_set() -> None:
    from common.parameters import written

    assert written(Parameters()) == {}
    assert written(Parameters(cfg_rescale=0.7, clip_skip=2)) == {"Clip skip": "2", "CFG Rescale φ": "0.7"}
