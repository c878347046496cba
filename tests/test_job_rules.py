"""Every rule of a place against every way of starting a job (bot/jobs.py), as a table.

A new entry point goes into ENTRY_POINTS; a new rule into RULES. An entry point that skips a rule
fails here — as /checkpoints compare once skipped the server's most-steps and most-pictures limits.
No worker is needed: rules are applied when a job is planned, before anything is queued.
"""

from __future__ import annotations

import io
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
from PIL import Image

from bot.checkpoints.registry import CheckpointRegistry
from bot.db import open_database
from bot.generation.jobs import Job, new_job_id
from bot.generation.service import GenerationService
from bot.guilds.settings import GuildSettings
from bot.images.inputs import InputStore
from bot.jobs import VARY_SUBTLE, Asker, ImagineOptions, JobPlan, Jobs, Place, reroll, same_seed
from bot.rules.limits import GenerationRequest, Limits, validate
from common.errors import EaselError
from gpu_worker.testing.tiny_flux import make_tiny_flux
from tests.helpers import with_metadata

pytestmark = pytest.mark.asyncio(loop_scope="module")

PROMPT = "a castle on a hill"


def _picture() -> bytes:
    """A picture as a Vary button reads it from the message: a small PNG."""
    out = io.BytesIO()
    Image.new("RGB", (8, 8), (200, 0, 0)).save(out, format="PNG")
    return out.getvalue()


PICTURE = _picture()


@dataclass
class World:
    jobs: Jobs
    settings: GuildSettings
    registry: CheckpointRegistry
    records: dict[str, str]  # checkpoint name -> id of a stored 2-picture job made with it


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    root = tmp_path_factory.mktemp("rules")
    models = root / "models"
    models.mkdir()
    shutil.copy(tiny_dir / "tiny-sd1.safetensors", models / "plain.safetensors")
    shutil.copy(tiny_dir / "tiny-sdxl.safetensors", models / "other.safetensors")
    with_metadata(tiny_dir / "tiny-sd1.safetensors", models / "spicy.safetensors", {"modelspec.title": "spicy"})
    # edit models (all-in-one: no parts to find), each of its own seed: two files of the same bytes
    # are one checkpoint to the registry, and which name it kept depended on the folder's order
    for seed, name in enumerate(EDIT_MODEL.values(), start=1):
        make_tiny_flux(models / f"{name}.safetensors", seed=seed, kontext=True)
    db = await open_database(root / "easel.sqlite3")
    registry = CheckpointRegistry(db, models)
    await registry.scan()
    await registry.edit("spicy", nsfw=True)
    await registry.edit(EDIT_MODEL["spicy"], nsfw=True)
    limits = Limits(max_queued_per_user=10)
    generation = GenerationService(db, [], limits)  # never started: plans need no worker
    settings = GuildSettings(db, registry, [], limits)
    jobs = Jobs(registry, generation, settings, inputs=InputStore(root / "inputs"))
    records = {}
    for name in ("plain", "spicy", "other"):
        from bot.generation.checkpoint_ref import resolve_checkpoint

        ref = await resolve_checkpoint(registry, name)
        request = GenerationRequest.of(prompt=PROMPT, requester_id="alice", steps=3, count=2, seed=1, guild_id="g")
        job = Job(new_job_id(), validate(request, ref, limits))
        await generation.store.insert(job)
        records[name] = job.id
    yield World(jobs, settings, registry, records)
    await db.close()


Subject = str  # the checkpoint the rule is about
EntryPoint = Callable[[World, Place, Subject], Awaitable[JobPlan]]
ALICE = Asker("alice", "alice")


async def imagine(w: World, place: Place, subject: Subject) -> JobPlan:
    options = ImagineOptions.of(prompt=PROMPT, checkpoint=subject, steps=3, count=2)
    return await w.jobs.plan_imagine(ALICE, place, options)


async def reroll_button(w: World, place: Place, subject: Subject) -> JobPlan:
    return await w.jobs.plan_rerun(ALICE, place, w.records[subject], seed=reroll)


async def vary_button(w: World, place: Place, subject: Subject) -> JobPlan:
    return await w.jobs.plan_rerun(ALICE, place, w.records[subject], init_image=PICTURE, strength=VARY_SUBTLE)


async def other_checkpoint_select(w: World, place: Place, subject: Subject) -> JobPlan:
    return await w.jobs.plan_rerun(ALICE, place, w.records["other"], seed=same_seed, checkpoint=subject)


async def compare(w: World, place: Place, subject: Subject) -> JobPlan:
    return await w.jobs.plan_compare(ALICE, place, PROMPT, [subject, "other"], steps=3)


# An edit runs on an edit model: the rule's subject's twin (a FLUX.1 Kontext file, as plain or NSFW).
EDIT_MODEL = {"plain": "plain-kontext", "spicy": "spicy-kontext"}


async def edit(w: World, place: Place, subject: Subject) -> JobPlan:
    given = {"steps": 3, "count": 2}
    return await w.jobs.plan_edit(ALICE, place, PROMPT, [PICTURE], checkpoint=EDIT_MODEL[subject], given=given)


ENTRY_POINTS: dict[str, EntryPoint] = {
    "/imagine and the Use-this modal": imagine,
    "Reroll": reroll_button,
    "Vary": vary_button,
    "another checkpoint": other_checkpoint_select,
    "/checkpoints compare and Compare these": compare,
    "/edit, the Edit button and Edit with Easel": edit,
}


def subject_of(entry: str, subject: Subject) -> Subject:
    """The checkpoint an entry point runs for a rule's subject."""
    return EDIT_MODEL[subject] if ENTRY_POINTS[entry] is edit else subject


@dataclass
class Rule:
    subject: Subject
    server: dict  # the server's /settings policy
    adult: bool = False
    hidden: bool = False
    refusal: str = ""


RULES: dict[str, Rule] = {
    "hidden checkpoint": Rule("plain", {}, hidden=True, refusal="is not offered in this server"),
    "NSFW outside age-restricted channels": Rule("spicy", {}, refusal="marked NSFW"),
    "NSFW never, even age-restricted": Rule("spicy", {"nsfw": "never"}, adult=True, refusal="marked NSFW"),
    "blocked words": Rule("plain", {"blocked_words": "castle"}, refusal="does not allow"),
    "most steps": Rule("plain", {"max_steps": 2}, refusal="at most 2 steps"),
    "most pictures": Rule("plain", {"max_images": 1}, refusal="at most 1 picture"),
}


@pytest.mark.parametrize("rule", sorted(RULES))
@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
async def test_every_rule_applies_to_every_entry_point(world: World, entry: str, rule: str) -> None:
    case = RULES[rule]
    guild = f"{entry}:{rule}"
    if case.server:
        await world.settings.update(guild, None, case.server)
    if case.hidden:
        await world.settings.hide(guild, subject_of(entry, case.subject), True)
    place = Place(guild, "channel", adult=case.adult)
    with pytest.raises(EaselError, match=case.refusal):
        await ENTRY_POINTS[entry](world, place, case.subject)
    # The same request where no rule objects goes through: the refusal was the rule's doing.
    plan = await ENTRY_POINTS[entry](world, Place(f"{guild}:free", "channel", adult=True), case.subject)
    assert plan.items and not plan.spoiler


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
async def test_every_entry_point_shows_a_spoilering_servers_pictures_behind_a_spoiler(world: World, entry: str) -> None:
    guild = f"{entry}:spoiler"
    await world.settings.update(guild, None, {"spoiler": True})
    plan = await ENTRY_POINTS[entry](world, Place(guild, "channel"), "plain")
    assert plan.spoiler


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
async def test_the_place_defaults_fill_what_was_left_out(world: World, entry: str) -> None:
    guild = f"{entry}:defaults"
    await world.settings.update(guild, None, {"negative": "blurry", "cfg": 4.5})
    plan = await ENTRY_POINTS[entry](world, Place(guild, "channel"), "plain")
    request, _ = plan.items[0]
    asked = request.parameters
    if entry in ("Reroll", "Vary", "another checkpoint"):  # a rerun keeps the stored job's values
        assert (asked.negative, asked.cfg) == ("", 7.0)
    elif ENTRY_POINTS[entry] is edit:  # a Flux model's CFG is its own (1: its guidance is distilled)
        assert (asked.negative, asked.cfg) == ("blurry", 1.0)
    else:
        assert (asked.negative, asked.cfg) == ("blurry", 4.5)


async def test_the_command_line_is_the_owner_at_the_host(world: World) -> None:
    """Server rules do not apply on the host's command line; the bot's own limits still do."""
    host = Place.command_line()
    plan = await world.jobs.plan_imagine(Asker.host(), host, ImagineOptions.of(prompt=PROMPT, checkpoint="spicy"))
    assert plan.items[0][1].name == "spicy"
    with pytest.raises(EaselError, match="steps must be between 1 and 150"):
        await world.jobs.plan_imagine(Asker.host(), host, ImagineOptions.of(prompt=PROMPT, checkpoint="plain", steps=500))


async def test_one_moderator_role() -> None:
    assert Jobs.may_change(Asker("bob", manages_server=True), "alice")
    assert Jobs.may_change(Asker("alice"), "alice")
    assert not Jobs.may_change(Asker("bob"), "alice")


async def test_a_channel_default_that_cannot_be_used_is_replaced_and_said(world: World) -> None:
    place = Place("g-default", "c")
    await world.settings.update("g-default", None, {"checkpoint": "plain"})
    entry = await world.registry.get("plain")
    await world.registry.db.execute("UPDATE checkpoints SET status = 'missing' WHERE id = ?", (entry.id,))
    await world.registry.db.commit()
    try:
        plan = await world.jobs.plan_imagine(ALICE, place, ImagineOptions.of(prompt=PROMPT, steps=3))
        [spec] = plan.specs
        assert spec.checkpoint.name != "plain"
        assert f"this channel's default checkpoint (plain) cannot be used now: {spec.checkpoint.name} was used instead" in spec.notes
    finally:
        await world.registry.db.execute("UPDATE checkpoints SET status = 'present' WHERE id = ?", (entry.id,))
        await world.registry.db.commit()
        await world.settings.reset("g-default", None)


async def test_reading_a_pictures_parameters_is_one_per_person_per_cooldown(world: World) -> None:
    """/pnginfo (and /upscale) decode on the bot's CPU with no queue in front: a person waits out
    the cooldown between two; the host's command line does not."""
    from PIL.PngImagePlugin import PngInfo

    from bot.rules.cooldowns import Cooldowns

    info = PngInfo()
    info.add_text("parameters", "a cat\nSteps: 20, Sampler: Euler, Seed: 1, Size: 64x64")
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), "white").save(buffer, format="PNG", pnginfo=info)
    before = world.jobs.picture_cooldowns
    world.jobs.picture_cooldowns = Cooldowns(60)
    try:
        _, read = await world.jobs.read_parameters(buffer.getvalue(), "mallory")
        assert read.params["Steps"] == "20"
        with pytest.raises(EaselError, match="slow down a little: you can ask again in 60 s"):
            await world.jobs.read_parameters(buffer.getvalue(), "mallory")
        await world.jobs.read_parameters(buffer.getvalue(), "someone else")
        for _ in range(3):
            await world.jobs.read_parameters(buffer.getvalue())  # the host
    finally:
        world.jobs.picture_cooldowns = before


async def test_upscaling_a_one_step_job_runs_its_second_pass_for_a_step(world: World) -> None:
    """The Upscale button on a 1-step job (int(1 × 0.7) = 0 steps at the default strength) gives
    the second pass the steps it needs instead of blaming a strength nobody chose."""
    from bot.generation.checkpoint_ref import resolve_checkpoint

    limits = world.jobs.generation.limits
    ref = await resolve_checkpoint(world.registry, "plain")
    request = GenerationRequest.of(prompt=PROMPT, requester_id="alice", steps=1, seed=1, guild_id="g")
    job = Job(new_job_id(), validate(request, ref, limits))
    await world.jobs.generation.store.insert(job)
    plan = await world.jobs.plan_rerun(Asker("alice"), Place("g", "c"), job.id, seed=same_seed, hires_scale=2.0)
    [spec] = plan.specs
    assert (spec.parameters.steps, spec.parameters.hires_steps, spec.parameters.hires_scale) == (1, 2, 2.0)
    with pytest.raises(EaselError, match=r"second pass would run no step \(1 step\(s\) × denoising strength 0.7"):
        await world.jobs.plan_imagine(
            Asker("alice"), Place("g", "c"), ImagineOptions.of(prompt=PROMPT, checkpoint="plain", steps=1, hires_scale=2.0)
        )
