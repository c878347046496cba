"""The Discord bot under simcord: the real discord.py bot, real services, a real worker process."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import discord
import httpx
import pytest
import pytest_asyncio
import simcord
from PIL import Image

from bot.config import Settings
from bot.images.infotext import parse_infotext as read_infotext
from bot.model_files import scan_models
from bot.services import Services, open_services
from cogs.app import create_bot
from common.samplers import SAMPLERS
from gpu_worker.testing.tiny import make_tiny_vae
from gpu_worker.testing.tiny_upscalers import make_tiny_upscaler
from tests.a1111_infotext import parse_generation_parameters as parse_infotext
from tests.helpers import HeldWorker, blocker, eventually, queue_unchecked

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def services(
    tiny_dir: Path, tiny_loras: Path, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Services]:
    root = tmp_path_factory.mktemp("discord")
    models = root / "models"
    (models / "Lora").mkdir(parents=True)
    shutil.copy(tiny_dir / "tiny-sd1.safetensors", models / "tiny-sd1.safetensors")
    shutil.copy(tiny_dir / "tiny-sdxl.safetensors", models / "tiny-xl.safetensors")
    shutil.copy(tiny_loras / "lora-sd1.safetensors", models / "Lora" / "ink.safetensors")
    (models / "embeddings").mkdir()
    shutil.copy(tiny_loras / "embedding-sd1.safetensors", models / "embeddings" / "blotchy.safetensors")
    make_tiny_upscaler(models / "ESRGAN" / "2x-Tiny.pth", "esrgan", 2)
    make_tiny_vae("sd1", models / "VAE" / "soft.safetensors", seed=5)
    # Previews every third step whatever the time between them (preview_seconds=0): the preview tests
    # need one or a few on a fast machine too; each is checked by the real detector (~30 ms).
    settings = Settings(
        models_dir=models, data_dir=root / "data", devices=["cpu"], owner_ids=[], cooldown_seconds=0, preview_seconds=0
    )
    services = await open_services(settings, preview_every=3)
    await scan_models(services.registry, services.networks)
    yield services
    await services.close()


@pytest_asyncio.fixture(loop_scope="module")
async def env(services: Services) -> AsyncIterator[simcord.Env]:
    # As simcord's own simcord_env fixture does (its plugin selects the clock in the test's
    # context); ours runs on the module's loop, beside the shared worker.
    env = simcord.Env(create_bot(services, always_sync=True), settle_timeout=90)
    await env.start()
    try:
        yield env
    finally:
        await env.shutdown()
        # A refusal (an EaselError or a failed check) reaches the tree's one error handler by design and
        # is answered there; simcord records it like any error. Only the others are bugs.
        unexpected = [e for e in env.errors_since(env._errors_acknowledged) if not is_refusal(e)]
        if unexpected:
            raise ExceptionGroup("the bot raised unexpected errors during the test", unexpected)


def is_refusal(error: BaseException) -> bool:
    from discord import app_commands

    from common.errors import EaselError

    cause = error.__cause__ if isinstance(error, app_commands.CommandInvokeError) else error
    return isinstance(cause, EaselError | app_commands.CheckFailure)


def world(env: simcord.Env):
    guild = env.create_guild()
    channel = guild.create_text_channel("art")
    alice = guild.add_member(env.create_user("alice"))
    return guild, channel, alice


async def png_of(message: discord.Message) -> Image.Image:
    [attachment] = message.attachments
    return Image.open(io.BytesIO(await attachment.read()))


def custom_ids(message) -> list[str]:
    return [button["custom_id"] for row in message.components for button in row["components"]]


async def test_imagine_defers_first_then_posts_the_picture(env: simcord.Env) -> None:
    _, channel, alice = world(env)
    result = await alice.slash(channel, "imagine", prompt="a red fox in snow", checkpoint="tiny-sd1", steps=4, seed=42)
    # The first thing the bot sends about the interaction is the deferral (type 5), before any work.
    about = [r for r in env.http_requests if "simcord_interaction" in r.path]
    assert about[0].path.endswith("/callback") and about[0].json == {"type": 5}
    assert result.acknowledged
    message = result.response
    image = await png_of(message)
    prompt, _, params = parse_infotext(image.info["parameters"])
    assert (prompt, params["Seed"], params["Steps"], params["Model"]) == ("a red fox in snow", "42", "4", "tiny-sd1")
    embed = message.embeds[0]
    fields = {f.name: f.value for f in embed.fields}
    assert embed.title == "a red fox in snow" and fields["Seed"] == "42" and "tiny-sd1" in fields["Checkpoint"]
    job_id = embed.footer.text.split()[1]
    assert custom_ids(message) == [
        f"easel:reroll:{job_id}",
        f"easel:edit:{job_id}",
        f"easel:upscale:{job_id}",
        f"easel:vary:{job_id}",
        f"easel:varyx:{job_id}",
        f"easel:faces:{job_id}",
        f"easel:params:{job_id}",
        f"easel:delete:{job_id}",
        f"easel:other:{job_id}",
    ]
    record = await env.bot.services.generation.get_job(job_id)
    assert record.row["message_id"] == str(message.id)
    assert record.row["requester_id"] == str(alice.id)


async def test_bad_request_gets_a_private_reason(env: simcord.Env) -> None:
    _, channel, alice = world(env)
    result = await alice.slash(channel, "imagine", prompt="   ", checkpoint="tiny-sd1")
    [followup] = result.followups
    assert followup.flags.ephemeral and "prompt is empty" in followup.content
    unknown = await alice.slash(channel, "imagine", prompt="x", checkpoint="nope")
    assert "no checkpoint named 'nope'" in unknown.followups[0].content


async def test_cooldown_says_when_to_retry(env: simcord.Env, services: Services) -> None:
    _, channel, alice = world(env)
    services.generation.cooldowns.seconds = 60
    try:
        await alice.slash(channel, "imagine", prompt="one", checkpoint="tiny-sd1", steps=1)
        again = await alice.slash(channel, "imagine", prompt="two", checkpoint="tiny-sd1", steps=1)
        [followup] = again.followups
        assert followup.flags.ephemeral and "you can ask again in" in followup.content
    finally:
        services.generation.cooldowns.seconds = 0


async def test_every_command_keeps_within_discords_limits(env: simcord.Env) -> None:
    """Discord refuses a command tree past its limits at sync (discord.py does not check): at most 25
    options a command (/imagine is at 25), names of 1-32 characters, descriptions of 1-100, 25 choices."""
    from discord import app_commands

    commands = [c for c in env.bot.tree.walk_commands() if isinstance(c, app_commands.Command)]
    assert commands
    for command in commands:
        assert len(command.parameters) <= 25, (command.qualified_name, len(command.parameters))
        assert 1 <= len(command.name) <= 32 and 1 <= len(command.description) <= 100, command.qualified_name
        for parameter in command.parameters:
            assert 1 <= len(parameter.name) <= 32, (command.qualified_name, parameter.name)
            assert 1 <= len(parameter.description) <= 100, (command.qualified_name, parameter.name)
            assert len(parameter.choices) <= 25, (command.qualified_name, parameter.name)
    imagine = next(c for c in commands if c.qualified_name == "imagine")
    assert len(imagine.parameters) == 25  # full: a new /imagine option needs another home first


async def test_checkpoint_autocomplete(env: simcord.Env) -> None:
    _, channel, alice = world(env)
    choices = await alice.autocomplete(channel, "imagine", "checkpoint", "xl", prompt="x")
    assert [c["value"] for c in choices] == ["tiny-xl"]
    assert "SDXL base" in choices[0]["name"]


async def test_the_sampler_option_offers_every_schedule_type_and_the_picture_follows_it(env: simcord.Env) -> None:
    _, channel, alice = world(env)
    choices = await alice.autocomplete(channel, "imagine", "sampler", "2m sgm", prompt="x")
    assert [c["value"] for c in choices] == ["DPM++ 2M SGM Uniform", "DPM++ 2M SDE SGM Uniform", "DPM++ 2M SDE Heun SGM Uniform"]
    offered = [c["value"] for c in await alice.autocomplete(channel, "imagine", "sampler", "", prompt="x")]
    assert offered[:14] == list(SAMPLERS) and len(offered) == 25  # the names alone first
    result = await alice.slash(channel, "imagine", prompt="a fox", checkpoint="tiny-sd1", steps=2, sampler="DPM++ 2M SGM Uniform")
    params = parse_infotext((await png_of(result.response)).info["parameters"])[2]
    assert (params["Sampler"], params["Schedule type"]) == ("DPM++ 2M", "SGM Uniform")
    refused = await alice.slash(channel, "imagine", prompt="a fox", checkpoint="tiny-sd1", sampler="DPM++ 2M Sigmoid")
    assert "unknown sampler 'DPM++ 2M Sigmoid'" in refused.followups[0].content


async def test_the_variation_option_is_a1111s_variation_seed(env: simcord.Env) -> None:
    _, channel, alice = world(env)
    base = {"prompt": "a fox", "checkpoint": "tiny-sd1", "steps": 2, "seed": 4}
    given = await alice.slash(channel, "imagine", **base, variation="1234:0.3")
    params = parse_infotext((await png_of(given.response)).info["parameters"])[2]
    assert (params["Seed"], params["Variation seed"], params["Variation seed strength"]) == ("4", "1234", "0.3")
    drawn = await alice.slash(channel, "imagine", **base, variation="0.2")
    params = parse_infotext((await png_of(drawn.response)).info["parameters"])[2]
    assert params["Variation seed strength"] == "0.2" and params["Variation seed"].isdigit()  # drawn at random
    for text, message in (("lots", "variation 'lots' is not STRENGTH or SEED:STRENGTH"), ("1:2", "strength must be between 0 and 1")):
        refused = await alice.slash(channel, "imagine", **base, variation=text)
        assert message in refused.followups[0].content and refused.followups[0].flags.ephemeral


async def test_a_servers_styles_are_kept_by_managers_and_offered_to_imagine(env: simcord.Env) -> None:
    guild, channel, alice = world(env)
    admins = guild.create_role("Stylists", permissions=discord.Permissions(manage_guild=True))
    admin = guild.add_member(env.create_user("style-admin"), roles=[admins])
    saved = await admin.slash(channel, "settings styles add", name="Ink", prompt="{prompt}, ink drawing", negative="colour")
    assert saved.ephemeral and "Saved style **Ink**" in saved.response.content
    await admin.slash(channel, "settings styles add", name="Night", prompt="at night")
    listed = await admin.slash(channel, "settings styles list")
    assert [f.name for f in listed.response.embeds[0].fields] == ["Ink · this server", "Night · this server"]
    assert "settings styles add" not in alice.available_commands(channel)  # managers only
    choices = await alice.autocomplete(channel, "imagine", "style", "ink, ni", prompt="x")
    assert [c["value"] for c in choices] == ["Ink, Night"]
    made = await alice.slash(channel, "imagine", prompt="a fox", checkpoint="tiny-sd1", steps=2, style="Ink, Night")
    prompt, negative, _ = parse_infotext((await png_of(made.response)).info["parameters"])
    assert (prompt, negative) == ("a fox, ink drawing, at night", "colour")  # the styled prompt, as A1111 writes it
    unknown = await alice.slash(channel, "imagine", prompt="a fox", checkpoint="tiny-sd1", style="Sepia")
    assert "no style named 'Sepia' here" in unknown.followups[0].content
    gone = await admin.slash(channel, "settings styles remove", name="ink")
    assert "Removed style" in gone.response.content


async def test_wildcards_give_each_picture_its_own_prompt_and_are_listed(env: simcord.Env, services: Services) -> None:
    _, channel, alice = world(env)
    folder = Path(services.settings.models_dir) / "wildcards" / "colours"
    folder.mkdir(parents=True)
    (folder / "warm.txt").write_text("red\norange\ngold\namber\n")
    made = await alice.slash(channel, "imagine", prompt="a __colours/warm__ {fox|cat}", checkpoint="tiny-sd1", steps=2, count=4, seed=9)
    texts = [Image.open(io.BytesIO(await a.read())).info["parameters"] for a in made.response.attachments]
    read = [read_infotext(text) for text in texts]  # the bot's own reader (/pnginfo) takes the extension's lines
    assert len(read) == 4 and len({info.prompt for info in read}) > 1  # each picture its own prompt
    for number, (info, text) in enumerate(zip(read, texts, strict=True)):
        assert info.prompt.split()[1] in {"red", "orange", "gold", "amber"} and info.prompt.split()[2] in {"fox", "cat"}
        assert (info.params["Seed"], info.params["Template"]) == (str(9 + number), "a __colours/warm__ {fox|cat}")
        assert text.splitlines()[-1] == "Template: a __colours/warm__ {fox|cat}"  # the extension's line, last
    explained = await alice.slash(channel, "explain", prompt="a __colours/warm__ {fox|cat}", seed=10)
    assert f"with seed 10: {read[1].prompt}" in explained.response.content  # what the second picture drew
    listed = await alice.slash(channel, "wildcards list")
    assert listed.ephemeral and "`__colours/warm__` · 4 choice(s)" in listed.response.embeds[0].description
    lines = await alice.slash(channel, "wildcards list", name="colours/warm")
    assert lines.response.embeds[0].description.split("\n") == ["• red", "• orange", "• gold", "• amber"]
    unknown = await alice.slash(channel, "imagine", prompt="a __nope__", checkpoint="tiny-sd1")
    assert "no wildcard named __nope__" in unknown.followups[0].content


async def test_parameters_reroll_and_delete_buttons(env: simcord.Env) -> None:
    guild, channel, alice = world(env)
    bob = guild.add_member(env.create_user("bob"))
    result = await alice.slash(channel, "imagine", prompt="a lighthouse", checkpoint="tiny-sd1", steps=2, seed=7)
    message = result.response
    params = await bob.click(message, label="Parameters")
    assert params.ephemeral and "Seed: 7" in params.response.content
    reroll = await bob.click(message, label="Reroll")
    new_message = reroll.response
    assert parse_infotext((await png_of(new_message)).info["parameters"])[2]["Seed"] != "7"
    fixed = (await bob.click(message, label="Fix faces")).response  # the same seed with the detail pass
    fixed_info = parse_infotext((await png_of(fixed)).info["parameters"])[2]
    assert fixed_info["Seed"] == "7" and fixed_info["ADetailer model"] == "NudeNet faces"
    assert "found no face to redraw" in fixed.embeds[0].description  # a lighthouse has none
    refused = await bob.click(message, label="Delete")
    assert refused.response.flags.ephemeral and "only the person who asked" in refused.response.content
    await alice.click(message, label="Delete")
    assert all(m.id != message.id for m in channel.history())


async def test_fix_hands_shows_where_a_hand_detector_is_installed(env: simcord.Env, services: Services) -> None:
    from gpu_worker.testing.tiny_detector import make_tiny_detector

    _, channel, alice = world(env)
    before = (await alice.slash(channel, "imagine", prompt="a hand", checkpoint="tiny-sd1", steps=2, seed=5)).response
    assert not [i for i in custom_ids(before) if i.startswith("easel:hands:")]
    detector = make_tiny_detector(Path(services.settings.models_dir) / "adetailer" / "hand_yolov8n.pt", classes=("hand",))
    await services.detectors.scan()
    try:
        message = (await alice.slash(channel, "imagine", prompt="a hand", checkpoint="tiny-sd1", steps=2, seed=5)).response
        job_id = message.embeds[0].footer.text.split()[1]
        assert f"easel:hands:{job_id}" in custom_ids(message)
        fixed = (await alice.click(message, label="Fix hands")).response
        info = parse_infotext((await png_of(fixed)).info["parameters"])[2]
        assert info["Seed"] == "5" and info["ADetailer model"] == "hand_yolov8n.pt"
    finally:  # the module's other tests see the bot as it was
        detector.unlink()
        await services.detectors.scan()


async def test_vary_and_another_checkpoint(env: simcord.Env) -> None:
    _, channel, alice = world(env)
    message = (
        await alice.slash(channel, "imagine", prompt="a windmill", checkpoint="tiny-sd1", steps=3, seed=10)
    ).response
    varied = (await alice.click(message, label="Vary (strong)")).response
    fields = {f.name: f.value for f in varied.embeds[0].fields}
    assert fields["From a picture"] == "denoising strength 0.65" and fields["Seed"] != "10"
    subtle = (await alice.click(message, label="Vary (subtle)")).response
    assert {f.name: f.value for f in subtle.embeds[0].fields}["From a picture"] == "denoising strength 0.35"
    upscaled = (await alice.click(message, label="Upscale")).response
    assert {f.name: f.value for f in upscaled.embeds[0].fields}["Hires fix"] == "128×128 · Latent · denoising 0.7"
    assert (await png_of(upscaled)).size == (128, 128)
    _, _, params = parse_infotext((await png_of(upscaled)).info["parameters"])
    assert params["Seed"] == "10" and params["Hires upscale"] == "2"  # the same seed, twice the size
    varied_big = (await alice.click(upscaled, label="Vary (subtle)")).response  # a hires picture, varied as it is
    assert (await png_of(varied_big)).size == (128, 128)
    assert {f.name: f.value for f in varied_big.embeds[0].fields}["Size"] == "128×128"
    other = (
        await alice.select(message, ["tiny-xl"], custom_id=next(c for c in custom_ids(message) if ":other:" in c))
    ).response
    prompt, _, params = parse_infotext((await png_of(other)).info["parameters"])
    assert (prompt, params["Seed"], params["Model"]) == ("a windmill", "10", "tiny-xl")


async def test_buttons_survive_a_restart(env: simcord.Env, services: Services) -> None:
    _, channel, alice = world(env)
    message = (await alice.slash(channel, "imagine", prompt="a boat", checkpoint="tiny-sd1", steps=2, seed=3)).response
    await env.restart_bot(create_bot(services, always_sync=True))
    params = await alice.click(message, label="Parameters")
    assert "a boat" in params.response.content


async def test_imagine_in_a_dm(env: simcord.Env) -> None:
    user = env.create_user("dana")
    result = await user.slash("imagine", prompt="a cat in a DM", checkpoint="tiny-xl", steps=2)
    assert parse_infotext((await png_of(result.response)).info["parameters"])[0] == "a cat in a DM"


async def test_status(env: simcord.Env) -> None:
    _, channel, alice = world(env)
    await alice.slash(channel, "imagine", prompt="a speed test", checkpoint="tiny-sd1", steps=2)
    result = await alice.slash(channel, "status")
    embed = result.response.embeds[0]
    assert result.ephemeral and embed.fields[0].name == "Worker 0 · cpu"
    assert " it/s on 64×64" in embed.fields[0].value  # a speed says what it was measured on
    used, free, total = map(float, re.search(r"memory: ([\d.]+) GB used, ([\d.]+) GB free of ([\d.]+) GB", embed.fields[0].value).groups())
    assert total > 0 and abs(used + free - total) < 0.2  # the bot's own worker says its device's memory
    catalog = next(f.value for f in embed.fields if f.name == "Catalog search by meaning")
    assert catalog == "loading…" or catalog.startswith("ready (all-MiniLM-L6-v2")


async def test_a_sharded_bot_serves_every_shard_and_status_shows_each(services: Services) -> None:
    env = simcord.Env(create_bot(services, always_sync=True, shard_count=3), settle_timeout=90)
    await env.start()
    try:
        guilds = [env.create_guild(shard_id=shard) for shard in (0, 1, 2, 2)]  # Discord's: (id >> 22) % shards
        far = guilds[3]
        channel = far.create_text_channel("art")
        alice = far.add_member(env.create_user("alice"))
        result = await alice.slash(channel, "imagine", prompt="a sharded fox", checkpoint="tiny-sd1", steps=2)
        assert result.response.attachments  # served on its shard
        status = await alice.slash(channel, "status")
        shards = next(f.value for f in status.response.embeds[0].fields if f.name == "Shards").splitlines()
        assert [line.split(":")[0].split()[0] for line in shards] == ["#0", "#1", "#2"]
        assert "#2 (this server):" in shards[2]
        assert [int(re.search(r": (\d+) servers", line)[1]) for line in shards] == [1, 1, 2]
    finally:
        await env.shutdown()


async def test_admin_commands_are_for_owners_only(
    env: simcord.Env, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    guild, channel, alice = world(env)
    before = [e.name for e in await services.registry.list()]
    refused = await alice.slash(channel, "admin scan")
    assert refused.ephemeral and "only the bot's owners" in refused.response.content
    refused = await alice.slash(channel, "admin merge", primary="tiny-sd1", method="copy", fp16=True, name="nope")
    assert "only the bot's owners" in refused.response.content
    assert [e.name for e in await services.registry.list()] == before
    owner = guild.add_member(env.create_user("owner"))
    monkeypatch.setattr(services.settings, "owner_ids", [owner.id])  # undone after the test
    merged = await owner.slash(
        channel, "admin merge", primary="tiny-sd1", method="copy", fp16=True, name="tiny-sd1-fp16"
    )
    assert merged.ephemeral and "Merged **tiny-sd1-fp16**" in merged.response.content
    assert (await services.registry.get("tiny-sd1-fp16")).training == "merged"
    scanned = await owner.slash(channel, "admin scan")
    assert "unchanged" in scanned.response.content
    refused = await alice.slash(channel, "admin edit", checkpoint="tiny-sd1-fp16", description="mine now")
    assert "only the bot's owners" in refused.response.content
    edited = await owner.slash(
        channel, "admin edit", checkpoint="tiny-sd1-fp16", description="half precision", tags="fast,test"
    )
    assert edited.ephemeral and edited.response.embeds[0].description == "half precision"
    assert (await services.registry.get("tiny-sd1-fp16")).tags == ["fast", "test"]
    refused = await alice.slash(channel, "admin remove", checkpoint="tiny-sd1-fp16")
    assert "only the bot's owners" in refused.response.content and await services.registry.find("tiny-sd1-fp16")
    removed = await owner.slash(channel, "admin remove", checkpoint="tiny-sd1-fp16")
    assert "still on disk" in removed.response.content and await services.registry.find("tiny-sd1-fp16") is None
    added = await owner.slash(channel, "admin add", path="tiny-sd1-fp16.safetensors", name="half")
    assert added.response.embeds[0].title == "half"
    both = await owner.slash(channel, "admin remove", lora="ink", embedding="blotchy")
    assert "name one checkpoint, one LoRA, one embedding or one upscaler" in both.response.content
    removed = await owner.slash(channel, "admin remove", lora="ink")
    assert "still on disk" in removed.response.content and await services.loras.find("ink") is None
    added = await owner.slash(channel, "admin add", path="Lora/ink.safetensors")  # the folder says: a LoRA
    fields = {f.name: f.value for f in added.response.embeds[0].fields}
    assert added.response.embeds[0].title == "ink" and fields["Kind"] == "LoRA for SD1.x"
    removed = await owner.slash(channel, "admin remove", upscaler="2x-Tiny")
    assert "still on disk" in removed.response.content and await services.upscalers.find("2x-Tiny") is None
    added = await owner.slash(channel, "admin add", path="ESRGAN/2x-Tiny.pth")  # the folder says: an upscaler
    fields = {f.name: f.value for f in added.response.embeds[0].fields}
    assert fields["Kind"] == "ESRGAN 2x (8nf, 1 blocks)" and "upscaler option" in fields["Use"]
    outside = await owner.slash(channel, "admin add", path="/etc/passwd")
    assert "outside the models directory" in outside.followups[0].content


@contextlib.asynccontextmanager
async def clock_moving_env(services: Services) -> AsyncIterator[simcord.Env]:
    """A bot whose waits on the worker are external to simcord, so its clock may move (a token can
    expire) while jobs run."""
    bot = create_bot(services, always_sync=True)
    env = simcord.Env(bot, settle_timeout=60)
    bot.external_wait = env.external_wait
    await env.start()
    try:
        with env.time_context():
            yield env
    finally:
        await env.shutdown()


async def test_result_after_the_token_expired_is_posted_to_the_channel(services: Services) -> None:
    from bot.generation.checkpoint_ref import resolve_checkpoint

    async with clock_moving_env(services) as env:
        _, channel, alice = world(env)
        checkpoint = await resolve_checkpoint(services.registry, "tiny-sd1")
        block = await blocker(services.generation, checkpoint)
        result = await alice.slash(channel, "imagine", prompt="a patient fox", checkpoint="tiny-sd1", steps=2, seed=5)
        assert "Queued: #1 in line" in result.response.content  # returned while the job waits
        await env.advance_time(901)  # 15 minutes later the interaction token is dead
        await block.release()
        # The job now runs on the worker, in real time.
        await eventually(
            lambda: channel.last_message is not None and bool(channel.last_message.attachments),
            "the picture was posted",
        )
        message = channel.last_message
        await env.settle(timeout=30)
        assert alice.mention in message.content and "ready" in message.content
        assert message.attachments and message.embeds[0].title == "a patient fox"


async def test_checkpoint_list_info_and_use_this(env: simcord.Env, services: Services) -> None:
    _, channel, alice = world(env)
    listing = await alice.slash(channel, "checkpoints list")
    description = listing.response.embeds[0].description
    assert "tiny-sd1" in description and "tiny-xl" in description
    only_xl = await alice.slash(channel, "checkpoints list", base="sdxl")
    assert "tiny-sd1" not in only_xl.response.embeds[0].description
    info = await alice.slash(channel, "checkpoints info", name="tiny-xl")
    fields = {f.name: f.value for f in info.response.embeds[0].fields}
    assert fields["Architecture"] == "SDXL base"
    modal = await alice.click(info.response, label="Use this")
    assert modal.modal is not None
    result = await alice.submit_modal(modal, {"prompt": "a castle on a hill"})
    prompt, _, params = parse_infotext((await png_of(result.response)).info["parameters"])
    assert (prompt, params["Model"]) == ("a castle on a hill", "tiny-xl")
    # NSFW-flagged checkpoints stay out of ordinary channels.
    entry = await services.registry.get("tiny-xl")
    await services.db.execute("UPDATE checkpoints SET nsfw = 1 WHERE id = ?", (entry.id,))
    await services.db.commit()
    try:
        hidden = await alice.slash(channel, "checkpoints info", name="tiny-xl")
        assert hidden.ephemeral and "no checkpoint named 'tiny-xl' here" in hidden.response.content
        refused = await alice.slash(channel, "imagine", prompt="x", checkpoint="tiny-xl", steps=1)
        assert "tiny-xl is marked NSFW" in refused.followups[0].content
        choices = await alice.autocomplete(channel, "imagine", "checkpoint", "tiny", prompt="x")
        values = [c["value"] for c in choices]
        assert "tiny-xl" not in values and "tiny-sd1" in values
        in_dm = await env.create_user("erin").slash("imagine", prompt="allowed in DMs", checkpoint="tiny-xl", steps=1)
        assert in_dm.response.attachments
    finally:
        await services.db.execute("UPDATE checkpoints SET nsfw = 0 WHERE id = ?", (entry.id,))
        await services.db.commit()


async def test_moderators_see_and_cancel_their_servers_queue(env: simcord.Env, services: Services) -> None:
    from bot.generation.checkpoint_ref import resolve_checkpoint
    from bot.generation.jobs import JobState
    from bot.rules.limits import GenerationRequest

    guild, channel, alice = world(env)
    mods = guild.create_role("Mods", permissions=discord.Permissions(manage_guild=True))
    mod = guild.add_member(env.create_user("mod"), roles=[mods])
    assert "queue" not in alice.available_commands(channel)  # hidden from members without Manage Server
    assert "queue" in mod.available_commands(channel)
    checkpoint = await resolve_checkpoint(services.registry, "tiny-sd1")

    def request(prompt: str, guild_id: int, steps: int) -> GenerationRequest:
        return GenerationRequest.of(
            prompt=prompt, requester_id=prompt, guild_id=str(guild_id), steps=steps, width=256, height=256
        )

    running = await queue_unchecked(services.generation, request("long one", guild.id, 150), checkpoint)
    waiting = await queue_unchecked(services.generation, request("waiting one", guild.id, 2), checkpoint)
    elsewhere = await queue_unchecked(services.generation, request("other server", guild.id + 1, 3), checkpoint)
    try:
        shown = await mod.slash(channel, "queue")
        text = shown.response.embeds[0].description
        assert shown.ephemeral and "long one" in text and "waiting one" in text and "other server" not in text
        picker = next(row["components"][0]["custom_id"] for row in shown.response.components)
        cancelled = await mod.select(shown.response, [waiting.job.id], custom_id=picker)
        assert "cancelled" in cancelled.response.content
        assert (await waiting.wait()).state is JobState.CANCELLED
    finally:
        for handle in (running, elsewhere):
            await services.generation.cancel(handle.job.id)
            await handle.wait()


async def test_checkpoint_search_use_and_compare(env: simcord.Env, services: Services) -> None:
    _, channel, alice = world(env)
    await services.registry.edit("tiny-sd1", facets={"styles": ["anime"]})
    await services.registry.edit("tiny-xl", facets={"styles": ["anime"], "trigger_words": ["xlw"]})
    try:
        result = await alice.slash(channel, "checkpoints search", question="which checkpoint for anime?")
        embed = result.response.embeds[0]
        assert embed.title == "Which checkpoint: which checkpoint for anime?"
        blocks = embed.description.split("\n\n")
        assert "`tiny-sd1`" in blocks[0] + blocks[1] and "`tiny-xl`" in blocks[0] + blocks[1]
        assert all(b.startswith("✅") and "· installed here" in b for b in blocks[:2])
        assert all(b.startswith("📚") and "not installed here" in b for b in blocks[2:])
        assert "trigger words: xlw" in embed.description and embed.footer.text.startswith("Read as: style anime")
        ids = custom_ids(result.response)
        assert "easel:usepick" in ids and any(i.startswith("easel:cmp:") for i in ids)

        modal = await alice.select(result.response, ["tiny-xl"], custom_id="easel:usepick")
        picture = await alice.submit_modal(modal, {"prompt": "a fox"})
        assert parse_infotext((await png_of(picture.response)).info["parameters"])[2]["Model"] == "tiny-xl"

        # Refinement buttons ask the question again with a constraint added, as a new answer.
        sdxl = (await alice.click(result.response, label="SDXL only")).response.embeds[0]
        assert sdxl.title == "Which checkpoint: which checkpoint for anime, sdxl only"
        assert "`tiny-xl`" in sdxl.description and "`tiny-sd1`" not in sdxl.description
        assert all("SDXL: 1024²" in b or "SDXL: 64²" in b for b in sdxl.description.split("\n\n")), sdxl.description
        mine = (await alice.click(result.response, label="Only installed")).response.embeds[0]
        assert all(b.startswith("✅") for b in mine.description.split("\n\n")) and "installed only" in mine.footer.text

        modal = await alice.click(result.response, label="Compare these")
        grid = await alice.submit_modal(modal, {"prompt": "a boat"})
        message = grid.response
        assert message.embeds[0].title == "Same prompt, same seed"
        info = json.loads((await png_of(message)).info["easel-compare"])
        assert sorted(c[0] for c in info["checkpoints"]) == ["tiny-sd1", "tiny-xl"] and info["prompt"] == "a boat"

        direct = await alice.slash(
            channel, "checkpoints compare", prompt="a tree", first="tiny-sd1", second="tiny-xl", seed=3
        )
        assert json.loads((await png_of(direct.response)).info["easel-compare"])["seed"] == 3
        twice = await alice.slash(channel, "checkpoints compare", prompt="a tree", first="tiny-sd1", second="tiny-sd1")
        assert twice.followups[0].flags.ephemeral and "named twice" in twice.followups[0].content

        helped = await alice.slash(channel, "checkpoints search", question="???")
        assert helped.followups[0].flags.ephemeral and "Ask in words" in helped.followups[0].content
    finally:
        await services.registry.edit("tiny-sd1", facets={"styles": []})
        await services.registry.edit("tiny-xl", facets={"styles": [], "trigger_words": []})


async def test_checkpoint_search_lists_live_civitai_suggestions(
    env: simcord.Env, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bot.catalog.civitai import CivitaiClient

    asked: list[httpx.Request] = []

    def civitai(request: httpx.Request) -> httpx.Response:
        asked.append(request)
        item = {"id": 7, "name": "Discord Live XL", "type": "Checkpoint", "nsfw": False,
                "modelVersions": [{"baseModel": "Illustrious"}], "stats": {"downloadCount": 1234}}  # fmt: skip
        return httpx.Response(200, json={"items": [item]})

    client = CivitaiClient(transport=httpx.MockTransport(civitai))
    monkeypatch.setattr(services.catalog, "live_search", True)  # the owner's switch; undone after the test
    monkeypatch.setattr(services.catalog, "_civitai_client", client)
    monkeypatch.setattr(services.catalog, "_live", None)
    _, channel, alice = world(env)
    try:
        result = await alice.slash(channel, "checkpoints search", question="dreamy pastel castles")
        embed = result.response.embeds[0]
        field = next(f for f in embed.fields if f.name == "Also on Civitai (not installed here)")
        assert field.value == "Discord Live XL · Illustrious · 1,234 downloads · https://civitai.com/models/7"
        assert asked[0].url.params["nsfw"] == "false"  # an ordinary channel hides NSFW checkpoints
    finally:
        await client.close()


async def test_owners_edit_facets_and_enrich(
    env: simcord.Env, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    guild, channel, alice = world(env)
    refused = await alice.slash(channel, "admin enrich")
    assert refused.ephemeral and "only the bot's owners" in refused.response.content
    refused = await alice.slash(channel, "admin edit", checkpoint="tiny-xl", styles="anime")
    assert "only the bot's owners" in refused.response.content
    owner = guild.add_member(env.create_user("facet-owner"))
    monkeypatch.setattr(services.settings, "owner_ids", [owner.id])  # undone after the test
    bad = await owner.slash(channel, "admin edit", checkpoint="tiny-xl", styles="anime, banana")
    assert "'banana' is not a known style" in bad.response.content
    assert (await services.registry.get("tiny-xl")).facets == {}
    ok = await owner.slash(
        channel, "admin edit", checkpoint="tiny-xl", styles="3d", good_at="portrait", training="merged"
    )
    assert ok.ephemeral and ok.response.content == "Saved."
    assert (await services.registry.get("tiny-xl")).facets == {
        "specialities": ["portraits"],
        "styles": ["render/3D"],
        "training": "merged",
    }
    cleared = await owner.slash(channel, "admin edit", checkpoint="tiny-xl", styles="-", good_at="-", training="merged")
    assert cleared.response.content == "Saved." and (await services.registry.get("tiny-xl")).facets == {
        "training": "merged"
    }


async def test_server_settings_shape_imagine(env: simcord.Env, services: Services) -> None:
    guild, channel, alice = world(env)
    other = guild.create_text_channel("other")
    admins = guild.create_role("Admins", permissions=discord.Permissions(manage_guild=True))
    admin = guild.add_member(env.create_user("server-admin"), roles=[admins])
    assert "settings policy" not in alice.available_commands(channel)  # hidden from members without Manage Server
    assert "settings policy" in admin.available_commands(channel)

    saved = await admin.slash(channel, "settings defaults", checkpoint="tiny-xl", steps=3, sampler="Euler")
    assert saved.ephemeral and saved.response.embeds[0].title == "Saved for the server"
    bad = await admin.slash(channel, "settings defaults", checkpoint="nope")
    assert "no runnable checkpoint named 'nope'" in bad.response.content
    await admin.slash(channel, "settings defaults", steps=2, this_channel=True)

    async def params_of(result) -> dict[str, str]:
        return parse_infotext((await png_of(result.response)).info["parameters"])[2]

    here = await params_of(await alice.slash(channel, "imagine", prompt="a cat"))
    assert (here["Model"], here["Steps"], here["Sampler"]) == ("tiny-xl", "2", "Euler")  # channel beats server
    there = await params_of(await alice.slash(other, "imagine", prompt="a cat"))
    assert (there["Model"], there["Steps"]) == ("tiny-xl", "3")
    explicit = await params_of(await alice.slash(other, "imagine", prompt="a cat", steps=1, checkpoint="tiny-sd1"))
    assert (explicit["Model"], explicit["Steps"]) == ("tiny-sd1", "1")

    await admin.slash(channel, "settings policy", max_images=1, spoiler=True, blocked_words="dragon")
    too_many = await alice.slash(channel, "imagine", prompt="a cat", count=2)
    assert "at most 1 picture(s)" in too_many.followups[0].content
    blocked = await alice.slash(channel, "imagine", prompt="a red dragon")
    assert "does not allow" in blocked.followups[0].content
    spoilered = await alice.slash(channel, "imagine", prompt="a cat")
    [attachment] = spoilered.response.attachments
    assert attachment.filename.startswith("SPOILER_") and spoilered.response.embeds[0].image.url is None

    hidden = await admin.slash(channel, "settings hide", checkpoint="tiny-sd1")
    assert "no longer offered" in hidden.response.content
    refused = await alice.slash(channel, "imagine", prompt="a cat", checkpoint="tiny-sd1")
    assert "tiny-sd1 is not offered in this server" in refused.followups[0].content
    choices = await alice.autocomplete(channel, "imagine", "checkpoint", "tiny", prompt="x")
    assert [c["value"] for c in choices] == ["tiny-xl"]
    listing = await alice.slash(channel, "checkpoints list")
    assert "tiny-sd1" not in listing.response.embeds[0].description
    in_dm = await env.create_user("dm-user").slash("imagine", prompt="a cat", checkpoint="tiny-sd1", steps=1)
    assert in_dm.response.attachments  # a server's rules stay in that server

    shown = await admin.slash(channel, "settings show")
    fields = {f.name: f.value for f in shown.response.embeds[0].fields}
    assert (
        fields["steps"] == "2 · channel"
        and fields["hidden"] == "tiny-sd1 · server"
        and fields["spoiler"] == "True · server"
    )
    await admin.slash(channel, "settings reset", this_channel=True)
    await admin.slash(channel, "settings reset")
    await admin.slash(channel, "settings unhide", checkpoint="tiny-sd1")
    after = await params_of(await alice.slash(channel, "imagine", prompt="a cat", checkpoint="tiny-sd1"))
    assert after["Steps"] == "20"


def answer(result) -> discord.Message:
    """The one message a command answered with (a deferred answer comes as a follow-up)."""
    return (result.followups or [result.response])[0]


@contextlib.asynccontextmanager
async def model_preview(services: Services, guild_id: str, table: str, sha256: str, path: Path) -> AsyncIterator[None]:
    """A red preview picture beside a registered model (`table`: checkpoints or loras), and the
    server's picture rules at the bot's defaults; both undone afterwards."""
    Image.new("RGB", (32, 32), "red").save(path)
    await services.db.execute(f"UPDATE {table} SET preview_path = ? WHERE sha256 = ?", (str(path), sha256))
    await services.db.commit()
    await services.guild_settings.reset(guild_id, None)
    try:
        yield
    finally:
        await services.guild_settings.reset(guild_id, None)
        await services.db.execute(f"UPDATE {table} SET preview_path = NULL WHERE sha256 = ?", (sha256,))
        await services.db.commit()
        await asyncio.to_thread(path.unlink)


async def test_info_shows_the_preview_image(env: simcord.Env, services: Services) -> None:
    guild, channel, alice = world(env)
    entry = await services.registry.get("tiny-sd1")
    preview = Path(services.settings.models_dir) / "tiny-sd1.preview.png"
    async with model_preview(services, str(guild.id), "checkpoints", entry.sha256, preview):
        card = answer(await alice.slash(channel, "checkpoints info", name="tiny-sd1"))
        [attachment] = card.attachments
        assert attachment.filename == "preview.png" and "preview.png" in card.embeds[0].thumbnail.url
        assert (await png_of(card)).size == (32, 32)
        # A model's preview is a picture like any other: scored by the real check before it is shown.
        await services.guild_settings.update(str(guild.id), None, {"nsfw_threshold": 0.0})
        withheld = answer(await alice.slash(channel, "checkpoints info", name="tiny-sd1"))
        fields = {f.name: f.value for f in withheld.embeds[0].fields}
        assert not withheld.attachments and "withheld by the picture check" in fields["Preview"]
        await services.guild_settings.update(str(guild.id), None, {"nsfw_pictures": "spoiler"})
        spoilered = answer(await alice.slash(channel, "checkpoints info", name="tiny-sd1"))
        assert [a.filename for a in spoilered.attachments] == ["SPOILER_preview.png"]
        assert not spoilered.embeds[0].thumbnail  # an embed would show it uncovered
        in_dm = answer(await env.create_user("fay").slash("checkpoints info", name="tiny-sd1"))  # allowed there
        assert [a.filename for a in in_dm.attachments] == ["preview.png"]


async def test_a_loras_preview_is_checked_like_a_checkpoints(env: simcord.Env, services: Services) -> None:
    guild, channel, alice = world(env)
    entry = await services.loras.get("ink")
    preview = Path(services.settings.models_dir) / "Lora" / "ink.preview.png"
    async with model_preview(services, str(guild.id), "loras", entry.sha256, preview):
        await services.guild_settings.update(str(guild.id), None, {"nsfw_threshold": 0.0})  # every picture "over" it
        withheld = answer(await alice.slash(channel, "loras info", name="ink"))
        fields = {f.name: f.value for f in withheld.embeds[0].fields}
        assert withheld.ephemeral and not withheld.attachments and "withheld by the picture check" in fields["Preview"]
        in_dm = answer(await env.create_user("gus").slash("loras info", name="ink"))
        assert [a.filename for a in in_dm.attachments] == ["preview.png"]


# --- unexpected errors: every entry point answers in one private line ------------------------------


class Boom(RuntimeError):
    """Stands in for any bug or outside failure (disk full, a library's TypeError)."""


def explode(*args: object, **kwargs: object) -> None:
    raise Boom("/secret/path/in/a/traceback")


def answered_with_our_fault(result) -> bool:
    from cogs.utils.errors import OUR_FAULT

    messages = [m for m in [result.response, *result.followups] if m is not None]
    texts = [m.content or "" for m in messages]
    private = [m for m in messages if m.flags.ephemeral and OUR_FAULT in (m.content or "")]
    return len(private) == 1 and not any("secret" in t for t in texts)


async def test_unexpected_errors_are_answered_from_every_command_group_and_button(
    env: simcord.Env, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    guild, channel, alice = world(env)
    admins = guild.create_role("Managers", permissions=discord.Permissions(manage_guild=True))
    manager = guild.add_member(env.create_user("manager"), roles=[admins])
    owner = guild.add_member(env.create_user("the-owner"))
    monkeypatch.setattr(services.settings, "owner_ids", [owner.id])
    message = (await alice.slash(channel, "imagine", prompt="a kite", checkpoint="tiny-sd1", steps=1, seed=1)).response

    with monkeypatch.context() as patch:
        patch.setattr(services.guild_settings, "effective", explode)
        for result in (
            await alice.slash(channel, "imagine", prompt="a kite", checkpoint="tiny-sd1"),  # deferred first
            await alice.slash(channel, "checkpoints list"),
            await manager.slash(channel, "settings show"),
            await alice.click(message, label="Reroll"),  # a persistent button
        ):
            assert answered_with_our_fault(result), result
    with monkeypatch.context() as patch:
        patch.setattr(services.generation, "status", explode)
        assert answered_with_our_fault(await alice.slash(channel, "status"))
    with monkeypatch.context() as patch:
        patch.setattr(services.generation, "guild_jobs", explode)
        assert answered_with_our_fault(await manager.slash(channel, "queue"))
    with monkeypatch.context() as patch:
        patch.setattr(services.registry, "scan", explode)
        assert answered_with_our_fault(await owner.slash(channel, "admin scan"))
    with monkeypatch.context() as patch:
        patch.setattr(services.generation, "get_job", explode)
        assert answered_with_our_fault(await alice.click(message, label="Parameters"))
    # The tree's errors reach simcord too (reading them acknowledges them): each is our planted one.
    assert env.errors and all(isinstance(e.__cause__ or e, Boom) for e in env.errors)
    # And the bot is still fine afterwards.
    assert (await alice.slash(channel, "imagine", prompt="a kite", checkpoint="tiny-sd1", steps=1)).response.attachments


async def test_a_failing_autocomplete_offers_nothing_and_breaks_nothing(
    env: simcord.Env, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, channel, alice = world(env)
    monkeypatch.setattr(services.registry, "list", explode)
    assert await alice.autocomplete(channel, "imagine", "checkpoint", "ti", prompt="x") == []
    assert all(isinstance(e.__cause__ or e, Boom) for e in env.errors)


async def test_zero_width_prompts_and_wildcard_names_are_refused(env: simcord.Env) -> None:
    _, channel, alice = world(env)
    blank = await alice.slash(channel, "imagine", prompt="\u200b\u200d\u2060\ufeff", checkpoint="tiny-sd1")
    assert "prompt is empty" in blank.followups[0].content
    for name in ("%%%%%%%%%%", "__________", "%"):
        wild = await alice.slash(channel, "imagine", prompt="x", checkpoint=name)
        assert f"no checkpoint named {name!r}" in wild.followups[0].content


async def test_compare_obeys_the_servers_limits_and_spoilers(env: simcord.Env, services: Services) -> None:
    """The loophole: /checkpoints compare used to skip most-steps, most-pictures and spoilers."""
    guild, channel, alice = world(env)
    admins = guild.create_role("Admins", permissions=discord.Permissions(manage_guild=True))
    admin = guild.add_member(env.create_user("limits-admin"), roles=[admins])
    await admin.slash(channel, "settings policy", max_images=1)
    refused = await alice.slash(channel, "checkpoints compare", prompt="a bridge", first="tiny-sd1", second="tiny-xl")
    assert "at most 1 picture" in refused.followups[0].content
    await admin.slash(channel, "settings policy", max_images=4, spoiler=True)
    await admin.slash(channel, "settings defaults", steps=2)
    shown = await alice.slash(channel, "checkpoints compare", prompt="a bridge", first="tiny-sd1", second="tiny-xl")
    [attachment] = shown.response.attachments
    assert attachment.filename.startswith("SPOILER_")


async def test_explain_shows_chunks_weights_and_editing_privately(env: simcord.Env) -> None:
    _, channel, alice = world(env)
    result = await alice.slash(channel, "explain", prompt="a (fox:1.3) BREAK [cat:dog:0.5] <lora:ink:0.8>", steps=10)
    text = result.response.content  # the first follow-up after a defer fills the "thinking…" message
    assert result.ephemeral and text.startswith("```") and text.endswith("```")
    assert "taken out of the text (LoRAs apply to the whole picture): <lora:ink:0.8>" in text
    assert "steps 1-6 of 10" in text and "steps 7-10 of 10" in text  # A1111 counts calls from 0
    assert " 1.3000  fox" in text and "chunk 2:" in text
    long = (await alice.slash(channel, "explain", prompt="```" + "a, " * 490, steps=1)).response.content
    assert "14 chunk(s)" in long and len(long) == 2000 and long.count("```") == 2


async def test_loras_are_listed_picked_from_a_menu_and_credited(env: simcord.Env, services: Services) -> None:
    _, channel, alice = world(env)
    listed = await alice.slash(channel, "loras list")
    assert listed.ephemeral and "`<lora:ink:1>` · LoRA for SD1.x" in listed.response.content
    assert "`blotchy` · embedding for SD1.x (3 vectors)" in listed.response.content
    card = (await alice.slash(channel, "loras info", name="ink")).response.embeds[0]
    assert card.title == "ink" and "easel style" in {f.name: f.value for f in card.fields}["Trigger words"]
    result = await alice.slash(
        channel, "imagine", prompt="a red fox", checkpoint="tiny-sd1", steps=3, seed=9, lora="ink", lora_strength=0.7
    )
    embed = result.response.embeds[0]
    fields = {f.name: f.value for f in embed.fields}
    assert embed.title == "a red fox <lora:ink:0.7>" and fields["LoRAs"] == "ink 0.7"
    prompt, _, params = parse_infotext((await png_of(result.response)).info["parameters"])
    entry = await services.loras.get("ink")
    assert prompt == "a red fox <lora:ink:0.7>" and params["Lora hashes"] == f"ink: {entry.short_hash}"
    refused = await alice.slash(channel, "imagine", prompt="a red fox <lora:ink:1>", checkpoint="tiny-xl")
    assert "the LoRA ink is for SD1.x and tiny-xl is SDXL base" in refused.followups[0].content


async def test_imagine_starts_from_an_uploaded_picture(env: simcord.Env) -> None:
    _, channel, alice = world(env)
    picture = io.BytesIO()
    Image.new("RGB", (96, 64), (200, 40, 40)).save(picture, format="PNG")
    result = await alice.slash(
        channel, "imagine", prompt="a red fox", checkpoint="tiny-sd1", steps=4, seed=7,
        image=("fox.png", picture.getvalue()), strength=0.5,
    )  # fmt: skip
    embed = result.response.embeds[0]
    fields = {f.name: f.value for f in embed.fields}
    assert fields["From a picture"] == "denoising strength 0.5" and fields["Size"] == "96×64"
    upscaled = (await alice.click(result.response, label="Upscale")).response  # redrawn from itself, twice as big
    assert (await png_of(upscaled)).size == (192, 128)
    assert {f.name: f.value for f in upscaled.embeds[0].fields}["From a picture"] == "denoising strength 0.35"
    _, _, params = parse_infotext((await png_of(result.response)).info["parameters"])
    assert params["Denoising strength"] == "0.5"
    refused = await alice.slash(channel, "imagine", prompt="a fox", image=("fox.png", b"MZ\x90\x00not a picture"))
    assert "not a PNG, JPEG or WebP picture" in refused.followups[0].content
    mask = io.BytesIO()
    Image.new("L", (96, 64), 255).save(mask, format="PNG")
    inpainted = await alice.slash(
        channel, "imagine", prompt="a red fox", checkpoint="tiny-sd1", steps=4, seed=7,
        image=("fox.png", picture.getvalue()), mask=("mask.png", mask.getvalue()),
    )  # fmt: skip
    fields = {f.name: f.value for f in inpainted.response.embeds[0].fields}
    assert fields["From a picture"] == "denoising strength 0.75 · inpainting, mask blur 4"
    options = {"masked_content": "latent noise", "inpaint_area": "Only masked", "mask_padding": 8}
    inpainted = await alice.slash(
        channel, "imagine", prompt="a red fox", checkpoint="tiny-sd1", steps=4, seed=7,
        image=("fox.png", picture.getvalue()), mask=("mask.png", mask.getvalue()), **options,
    )  # fmt: skip
    fields = {f.name: f.value for f in inpainted.response.embeds[0].fields}
    assert fields["From a picture"] == (
        "denoising strength 0.75 · inpainting, mask blur 4, masked content latent noise, only masked (padding 8)"
    )
    _, _, params = parse_infotext((await png_of(inpainted.response)).info["parameters"])
    assert (params["Masked content"], params["Inpaint area"], params["Masked area padding"]) == (
        "latent noise",
        "Only masked",
        "8",
    )


async def test_pnginfo_shows_a_pictures_parameters_and_makes_it_here(env: simcord.Env) -> None:
    _, channel, alice = world(env)
    made = (await alice.slash(channel, "imagine", prompt="a lantern", checkpoint="tiny-sd1", steps=2, seed=77)).response
    picture = await made.attachments[0].read()
    shown = await alice.slash(channel, "pnginfo", image=("lantern.png", picture))
    assert shown.ephemeral and "a lantern" in shown.response.content and "Seed: 77" in shown.response.content
    remade = (await alice.click(shown.response, label="Make this here")).response
    assert (await png_of(remade)).tobytes() == (await png_of(made)).tobytes()
    plain = io.BytesIO()
    Image.new("RGB", (8, 8)).save(plain, format="PNG")
    refused = await alice.slash(channel, "pnginfo", image=("plain.png", plain.getvalue()))
    assert "carries no generation parameters" in (refused.followups or [refused.response])[0].content


async def test_regions_draw_through_imagine_are_written_as_the_regional_prompter_and_made_here_again(
    env: simcord.Env,
) -> None:
    """SDXL with the hires fix (every pass's grid), a negative split like the prompt, and the picture's
    Regional Prompter keys read back by "Make this here" to the same picture."""
    _, channel, alice = world(env)
    options = {"checkpoint": "tiny-xl", "steps": 2, "seed": 12, "hires": 1.5}
    negative = "fog BREAK rain BREAK mist BREAK haze"  # four parts, as the prompt's: split as it is
    made = (
        await alice.slash(
            channel, "imagine", prompt="a castle ADDBASE sky ADDROW a lake ADDCOL a boat", negative=negative,
            regions="1,2;2,1,1 base 0.3", **options,
        )
    ).response  # fmt: skip
    picture = await made.attachments[0].read()
    prompt, written, params = parse_infotext(Image.open(io.BytesIO(picture)).info["parameters"])
    assert (prompt, written) == ("a castle ADDBASE sky ADDROW a lake ADDCOL a boat", negative)
    assert (params["RP Active"], params["RP Divide mode"], params["RP Matrix submode"], params["RP Calc Mode"]) == (
        "True", "Matrix", "Columns", "Attention"
    )
    assert (params["RP Ratios"], params["RP Base Ratios"], params["RP Use Base"]) == ("1,2;2,1,1", "0.3", "True")
    plain = (await alice.slash(channel, "imagine", prompt=prompt, negative=negative, **options)).response
    assert (await png_of(plain)).tobytes() != (await png_of(made)).tobytes()  # the ratios change the picture
    shown = await alice.slash(channel, "pnginfo", image=("castle.png", picture))
    remade = (await alice.click(shown.response, label="Make this here")).response
    assert (await png_of(remade)).tobytes() == (await png_of(made)).tobytes()
    explained = await alice.slash(channel, "explain", prompt="sky ADDCOL sea", regions="1,3")
    assert "1: 0-25% across, 0-100% down: sky" in explained.response.content
    for prompt, regions, message in (
        ("a castle", "1,1", "separate the regions' prompts with ADDCOL or ADDROW"),
        ("a ADDCOL b", "1,0", "divide ratios are positive numbers, not 0"),
        ("a ADDCOL b", "1,1 sideways", "'sideways' is not understood"),
    ):
        refused = await alice.slash(channel, "imagine", prompt=prompt, checkpoint="tiny-sd1", regions=regions)
        assert message in refused.followups[0].content and refused.followups[0].flags.ephemeral, refused.followups[0].content


async def test_upscale_enlarges_a_picture_and_imagine_takes_an_upscaler_for_its_hires_fix(env: simcord.Env) -> None:
    _, channel, alice = world(env)
    options = {"prompt": "a lantern", "checkpoint": "tiny-sd1", "steps": 2, "seed": 5}
    made = (await alice.slash(channel, "imagine", hires=2.0, upscaler="2x-Tiny", **options)).response
    image = await png_of(made)
    params = parse_infotext(image.info["parameters"])[2]
    assert image.size == (128, 128) and (params["Hires upscale"], params["Hires upscaler"]) == ("2", "2x-Tiny")
    picture = await made.attachments[0].read()
    upscaled = await alice.slash(channel, "upscale", image=("lantern.png", picture), upscaler="2x-Tiny", scale=2.0)
    out = await png_of(upscaled.response)
    assert out.size == (256, 256) and out.info["parameters"] == image.info["parameters"]
    assert out.info["postprocessing"] == "Postprocess upscale by: 2, Postprocess upscaler: 2x-Tiny"
    assert "256×256" in upscaled.response.content
    refused = await alice.slash(channel, "upscale", image=("lantern.png", picture), upscaler="Latent", scale=2.0)
    assert "inside the hires fix" in (refused.followups or [refused.response])[0].content
    gif = await alice.slash(channel, "upscale", image=("x.png", b"GIF89a" + bytes(64)), scale=2.0)
    assert "not a PNG, JPEG or WebP" in (gif.followups or [gif.response])[0].content


async def test_a_vae_per_job_and_per_checkpoint(env: simcord.Env, services: Services, monkeypatch) -> None:
    guild, channel, alice = world(env)
    options = {"prompt": "a lantern", "checkpoint": "tiny-sd1", "steps": 2, "seed": 5}
    made = (await alice.slash(channel, "imagine", vae="soft", **options)).response
    assert {f.name: f.value for f in made.embeds[0].fields}["VAE"] == "soft.safetensors"
    _, _, params = parse_infotext((await png_of(made)).info["parameters"])
    assert params["VAE"] == "soft.safetensors"
    owner = guild.add_member(env.create_user("vae-owner"))
    monkeypatch.setattr(services.settings, "owner_ids", [owner.id])  # undone after the test
    saved = await owner.slash(channel, "admin edit", checkpoint="tiny-sd1", vae="soft")
    assert "its default" in {f.name: f.value for f in saved.response.embeds[0].fields}["VAE"]
    try:
        by_default = (await alice.slash(channel, "imagine", **options)).response
        _, _, params = parse_infotext((await png_of(by_default)).info["parameters"])
        assert params["VAE"] == "soft.safetensors"
    finally:
        await owner.slash(channel, "admin edit", checkpoint="tiny-sd1", vae="none")
    assert (await services.registry.get("tiny-sd1")).vae_sha256 is None


async def test_the_picture_check_withholds_or_spoilers_per_server(env: simcord.Env, services: Services) -> None:
    guild, channel, alice = world(env)
    options = {"prompt": "a lantern", "checkpoint": "tiny-sd1", "steps": 2, "seed": 5}
    # A threshold of 0 makes every picture "over" it: the real check's real score goes through the rules.
    await services.guild_settings.reset(str(guild.id), None)  # simcord's ids repeat between tests
    await services.guild_settings.update(str(guild.id), None, {"nsfw_threshold": 0.0})
    withheld = await alice.slash(channel, "imagine", **options)
    assert withheld.response.content.startswith("Nothing to show") and not withheld.response.attachments
    [private] = [m for m in withheld.followups if "withheld" in m.content]
    assert private.ephemeral and "age-restricted channel or in a DM" in private.content
    await services.guild_settings.update(str(guild.id), None, {"nsfw_pictures": "spoiler"})
    spoilered = (await alice.slash(channel, "imagine", **options)).response
    assert spoilered.attachments[0].filename.startswith("SPOILER_")
    assert "may be nudity" in spoilered.embeds[0].description
    job_id = spoilered.embeds[0].footer.text.split()[1]
    record = await services.generation.get_job(job_id)
    assert json.loads(record.row["safety_json"])["verdicts"] == ["spoiler"]
    upscaled = await alice.slash(channel, "upscale", image=("l.png", await spoilered.attachments[0].read()), scale=2.0)
    assert upscaled.response.attachments[0].filename.startswith("SPOILER_")  # /upscale is checked too
    in_dm = (await env.create_user("dora").slash("imagine", **options)).response  # the bot's defaults: allowed
    assert not in_dm.attachments[0].filename.startswith("SPOILER_")
    refused = await env.create_user("eve").slash("imagine", prompt="a n u d e l0li", checkpoint="tiny-sd1")
    assert "cannot be generated here or anywhere" in (refused.followups or [refused.response])[0].content
    await services.guild_settings.reset(str(guild.id), None)


async def test_in_the_playground_you_run_the_server_and_own_the_bot(
    env: simcord.Env, services: Services, monkeypatch
) -> None:
    from cogs.playground import playground_world

    monkeypatch.setattr(services.settings, "owner_ids", [])  # undone after the test
    channel, you, member = playground_world(env, services)
    shown = await you.slash(channel, "settings policy", spoiler=False)  # a manager's command
    assert (
        shown.ephemeral
        and shown.response.embeds
        and "only members who can manage" not in (shown.response.content or "")
    )
    queue = await you.slash(channel, "queue")
    assert "only members who can manage" not in (queue.response.content or "")
    scanned = await you.slash(channel, "admin scan")
    assert "only the bot's owners" not in (scanned.response.content or "")
    # the second member sees what ordinary users see: no server commands, owners' commands refused
    with pytest.raises(simcord.SetupError, match="not visible to this user"):
        await member.slash(channel, "queue")
    assert "only the bot's owners" in ((await member.slash(channel, "admin scan")).response.content or "")


async def test_checkpoint_info_says_a_gguf_files_quantisation(env: simcord.Env, services: Services) -> None:
    from gpu_worker.testing.quantise import quantise_file
    from gpu_worker.testing.tiny_flux import make_tiny_flux

    _, channel, alice = world(env)
    models = services.registry.models_root
    plain = make_tiny_flux(models / ".flux-plain.safetensors", shape="transformer")
    entry = await services.registry.add(quantise_file(plain, "gguf-q8_0", "flux", models / "flux1-dev-Q8_0.gguf"))
    try:
        info = await alice.slash(channel, "checkpoints info", name="flux1-dev-Q8_0")
        fields = {f.name: f.value for f in info.response.embeds[0].fields}
        assert fields["Format"].startswith("gguf · ") and fields["Quantisation"].startswith("GGUF Q8_0")
    finally:
        await services.registry.remove(entry.name)
        (models / "flux1-dev-Q8_0.gguf").unlink(missing_ok=True)  # a later scan finds no file of this test's


async def test_a_transformer_only_flux_file_says_what_it_needs_then_runs(env: simcord.Env, services: Services) -> None:
    from gpu_worker.testing.tiny_flux import make_tiny_component, make_tiny_flux

    _, channel, alice = world(env)
    models = services.registry.models_root
    entry = await services.registry.add(make_tiny_flux(models / "flux-alone.safetensors", shape="transformer"))
    try:
        info = await alice.slash(channel, "checkpoints info", name="flux-alone")
        fields = {f.name: f.value for f in info.response.embeds[0].fields}
        assert fields["Architecture"] == "FLUX.1 dev (transformer only)"
        assert "T5-XXL text encoder: missing (put t5xxl_fp16.safetensors in models/text_encoders)" in fields["Needs"]
        refused = await alice.slash(channel, "imagine", prompt="a red circle", checkpoint="flux-alone")
        assert (
            refused.followups[0].content.count("\n") == 0
            and "flux-alone needs a CLIP-L text encoder" in refused.followups[0].content
        )
        make_tiny_component("clip-l", models / "text_encoders" / "clip_l.safetensors")
        make_tiny_component("t5xxl", models / "text_encoders" / "t5xxl_fp16.safetensors")
        make_tiny_component("flux-vae", models / "VAE" / "ae.safetensors")
        await scan_models(services.registry, services.networks)
        made = (
            await alice.slash(channel, "imagine", prompt="a red circle", checkpoint="flux-alone", distilled_cfg=2.5)
        ).response
        _, _, params = parse_infotext((await png_of(made)).info["parameters"])
        assert (params["Distilled CFG Scale"], params["Sampler"], params["Module 3"]) == ("2.5", "Euler", "t5xxl_fp16")
    finally:
        await services.registry.remove(entry.name)
        for kind, name in (
            (services.text_encoders, "clip_l"),
            (services.text_encoders, "t5xxl_fp16"),
            (services.vaes, "ae"),
        ):
            if await kind.find(name) is not None:
                await kind.remove(name)


async def test_edit_a_picture_from_the_command_the_edit_button_and_any_message(env: simcord.Env, services: Services) -> None:
    from gpu_worker.testing.tiny_flux import make_tiny_flux, make_tiny_flux_parts

    guild, channel, alice = world(env)
    models = services.registry.models_root
    picture = io.BytesIO()
    Image.new("RGB", (96, 64), (200, 40, 40)).save(picture, format="PNG")
    fox = ("fox.png", picture.getvalue())
    nothing = await alice.slash(channel, "edit", image=fox, instruction="make it night")
    assert "no checkpoint here can edit pictures; ask the bot's owner to install one (FLUX.1 Kontext" in nothing.followups[0].content
    entry = await services.registry.add(make_tiny_flux(models / "flux1-kontext-dev.safetensors", shape="transformer"))
    parts = make_tiny_flux_parts(models)
    await scan_models(services.registry, services.networks)
    try:
        choices = await alice.autocomplete(channel, "edit", "checkpoint", "", image=fox, instruction="x")
        assert [c["value"] for c in choices] == ["flux1-kontext-dev"]  # only the models that can edit
        result = await alice.slash(channel, "edit", image=fox, instruction="make it night", steps=2, seed=3)
        message = result.response
        embed = message.embeds[0]
        fields = {f.name: f.value for f in embed.fields}
        assert embed.title == "make it night" and fields["Edit"] == "1 input picture · guidance 2.5"
        assert "Edited from fox.png" in embed.description and "flux1-kontext-dev" in fields["Checkpoint"]
        job_id = embed.footer.text.split()[1]
        assert f"easel:edit:{job_id}" in custom_ids(message)
        first = parse_infotext((await png_of(message)).info["parameters"])[2]
        assert len(first["Edit images"]) == 64 and first["Seed"] == "3"

        shown = await alice.click(message, label="Edit again")  # under an edit's result: its picture, edited again
        assert shown.modal is not None and shown.modal["title"] == "Edit the picture"
        again = (await alice.submit_modal(shown, {"instruction": "put a hat on it"})).response
        assert again.embeds[0].title == "put a hat on it" and f"Edited from [job {job_id}]" in again.embeds[0].description
        second = parse_infotext((await png_of(again)).info["parameters"])[2]
        assert second["Model"] == "flux1-kontext-dev" and second["Edit images"] != first["Edit images"]
        rerolled = (await alice.click(again, label="Reroll")).response  # Reroll keeps the edit
        assert parse_infotext((await png_of(rerolled)).info["parameters"])[2]["Edit images"] == second["Edit images"]

        posted = await alice.send(channel, "my fox", attachments=[fox])  # any message with a picture
        shown = await alice.context_menu(channel, "Edit with Easel", posted)
        edited = (await alice.submit_modal(shown, {"instruction": "turn it into a watercolour"})).response
        assert "Edited from [a picture by alice]" in edited.embeds[0].description
        assert parse_infotext((await png_of(edited)).info["parameters"])[2]["Edit images"] == first["Edit images"]
        plain = await alice.send(channel, "no picture here")
        refused = await alice.context_menu(channel, "Edit with Easel", plain)
        assert refused.ephemeral and "that message has no picture to edit" in refused.response.content
        wrong = await alice.slash(channel, "edit", image=fox, instruction="make it night", checkpoint="tiny-sd1")
        assert "tiny-sd1 (SD1.x) cannot edit pictures" in wrong.followups[0].content
        hostile = await alice.slash(channel, "edit", image=("fox.png", b"MZ\x90\x00not a picture"), instruction="make it night")
        assert "not a PNG, JPEG or WebP picture" in hostile.followups[0].content  # read as every upload is
        second = await alice.slash(channel, "edit", image=fox, image2=("evil.png", b"<svg onload=alert(1)>"), instruction="x")
        assert "not a PNG, JPEG or WebP picture" in second.followups[0].content  # every picture of an edit

        admins = guild.create_role("Admins", permissions=discord.Permissions(manage_guild=True))
        admin = guild.add_member(env.create_user("edit-admin"), roles=[admins])
        bad = await admin.slash(channel, "settings defaults", edit_checkpoint="tiny-sd1")
        assert "tiny-sd1 (SD1.x) cannot edit pictures" in bad.response.content
        saved = await admin.slash(channel, "settings defaults", edit_checkpoint="flux1-kontext-dev")
        fields = {f.name: f.value for f in saved.response.embeds[0].fields}
        assert fields["edit checkpoint"].startswith("flux1-kontext-dev · server")
    finally:
        await services.registry.remove(entry.name)
        for kind, name in ((services.text_encoders, "clip_l"), (services.text_encoders, "t5xxl_fp16"), (services.vaes, "ae")):
            if await kind.find(name) is not None:
                await kind.remove(name)
        for written in (*parts, entry.path):  # a later scan must not find them
            await asyncio.to_thread(Path(written).unlink)



async def test_control_draws_after_a_pictures_edges_and_shows_the_map(env: simcord.Env, services: Services) -> None:
    from gpu_worker.testing.tiny_annotator import make_tiny_annotator
    from gpu_worker.testing.tiny_controlnet import make_tiny_controlnet

    _, channel, alice = world(env)
    picture = io.BytesIO()
    drawn = Image.new("RGB", (64, 64), (20, 20, 20))
    drawn.paste((230, 230, 230), (16, 16, 48, 48))
    drawn.save(picture, format="PNG")
    square = ("square.png", picture.getvalue())
    missing = await alice.slash(channel, "control", image=square, prompt="a box", checkpoint="tiny-sd1")
    assert "no canny ControlNet for this checkpoint is installed; put one (e.g. control_v11p_sd15_canny) in models/ControlNet" in missing.followups[0].content
    folder = services.registry.models_root / "ControlNet"
    made = make_tiny_controlnet("sd1", folder / "control_v11p_sd15_canny.safetensors", seed=0)
    (folder / "control_hostile.pth").write_bytes(b"\x80\x04cposix\nsystem\nq\x00X\x02\x00\x00\x00idq\x01\x85q\x02Rq\x03.")
    report = await services.controlnets.scan()
    try:
        assert [e.name for e in report.added] == ["control_v11p_sd15_canny"] and "control_hostile.pth" in str(report.errors)
        choices = await alice.autocomplete(channel, "control", "model", "", image=square, prompt="x")
        assert [c["value"] for c in choices] == ["control_v11p_sd15_canny"]
        # The preprocessors Easel runs are more than Discord's 25 choices: offered as typed.
        offered = await alice.autocomplete(channel, "control", "preprocessor", "pidi", image=square, prompt="x")
        assert [c["value"] for c in offered] == ["softedge_pidinet", "softedge_pidisafe", "scribble_pidinet"]
        assert len(await alice.autocomplete(channel, "control", "preprocessor", "", image=square, prompt="x")) == 25
        result = await alice.slash(channel, "control", image=square, prompt="a box", checkpoint="tiny-sd1", steps=3, seed=4, detail="faces")
        message = result.response
        names = [a.filename for a in message.attachments]
        assert len(names) == 2 and names[1].endswith("-control-0.png"), names
        assert "The ControlNet map it followed: the last attachment." in message.embeds[0].description
        shown = Image.open(io.BytesIO(await message.attachments[1].read())).convert("L")
        size = shown.width  # the job's: the picture's shape at the checkpoint's size
        edge = [shown.getpixel((x, size // 2)) for x in range(size // 4 - 2, size // 4 + 3)]
        assert max(edge) > 0 and shown.getpixel((size // 2, size // 2)) == 0, edge  # the square's outline
        params = parse_infotext(Image.open(io.BytesIO(await message.attachments[0].read())).info["parameters"])[2]
        assert params["ControlNet 0"].startswith("Module: canny, Model: control_v11p_sd15_canny [")
        assert params["ADetailer model"] == "NudeNet faces"  # /control's detail option: the face pass after it
        rerolled = (await alice.click(message, label="Reroll")).response  # a rerun keeps its unit and picture
        assert len(rerolled.attachments) == 2
        other = next(c for c in custom_ids(message) if ":other:" in c)  # another base: its model chosen again
        moved = await alice.select(message, ["tiny-xl"], custom_id=other)
        assert "no canny ControlNet for this checkpoint is installed; put one (e.g. controlnet-canny-sdxl-1.0)" in (
            moved.followups[0].content if moved.followups else moved.response.content
        )
        xl = await alice.slash(channel, "control", image=square, prompt="a box", checkpoint="tiny-xl")
        assert "(e.g. controlnet-canny-sdxl-1.0)" in xl.followups[0].content  # none installed for SDXL
        named = await alice.slash(channel, "control", image=square, prompt="a box", checkpoint="tiny-xl", model="control_v11p_sd15_canny")
        assert "control_v11p_sd15_canny is for SD1 checkpoints, not SDXL" in named.followups[0].content
        blocked = await alice.slash(channel, "control", image=square, prompt="a box", checkpoint="tiny-sd1", preprocessor="none")
        assert "with the preprocessor none, name the ControlNet model to run" in blocked.followups[0].content
        # An annotator preprocessor: refused naming its file until that is in models/ControlNetPreprocessor.
        lines = {"image": square, "prompt": "a box", "checkpoint": "tiny-sd1", "preprocessor": "lineart_realistic", "model": "control_v11p_sd15_canny"}
        unannotated = await alice.slash(channel, "control", **lines)
        assert "the lineart_realistic preprocessor needs sk_model.pth (lllyasviel/Annotators on Hugging Face) in models/ControlNetPreprocessor" in unannotated.followups[0].content
        annotator = await asyncio.to_thread(make_tiny_annotator, "lineart", services.registry.models_root / "ControlNetPreprocessor" / "sk_model.pth")
        try:
            await services.annotators.scan()
            drawn = (await alice.slash(channel, "control", **lines, steps=3, seed=4)).response
            assert len(drawn.attachments) == 2
            params = parse_infotext(Image.open(io.BytesIO(await drawn.attachments[0].read())).info["parameters"])[2]
            assert params["ControlNet 0"].startswith("Module: lineart_realistic, Model: control_v11p_sd15_canny [")
        finally:
            await asyncio.to_thread(annotator.unlink)
            await services.annotators.scan()
        hostile = await alice.slash(channel, "control", image=("square.png", b"MZ\x90\x00not a picture"), prompt="a box", checkpoint="tiny-sd1")
        assert "not a PNG, JPEG or WebP picture" in hostile.followups[0].content
        from tests.test_uploads import png_claiming

        huge = await alice.slash(channel, "control", image=square, image2=("bomb.png", png_claiming(100_000, 100_000)), prompt="a box")
        assert "the picture claims an enormous size" in huge.followups[0].content  # the second unit's picture too
    finally:
        for written in (made, folder / "control_hostile.pth"):
            await asyncio.to_thread(written.unlink)
        await services.controlnets.scan()


# --- previews are pictures: they obey the picture rule ----------------------------------------------


def preview_uploads(env: simcord.Env, since: int) -> list[str]:
    """File names of every picture the bot sent to Discord since request number `since`."""
    names = []
    for request in env.http_requests[since:]:
        payload = request.json if isinstance(request.json, dict) else {}
        names += [a.get("filename", "") for a in payload.get("attachments") or [] if isinstance(a, dict)]
    return names


@pytest.fixture
def every_event_edits(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each progress event edits the job's message (no 1.5 s throttle): every preview is offered."""
    from cogs.utils import job_messages
    from cogs.utils.progress import Throttle

    monkeypatch.setattr(job_messages, "Throttle", lambda: Throttle(0.0))


async def test_previews_are_checked_like_the_picture(env: simcord.Env, services: Services, every_event_edits) -> None:
    guild, channel, alice = world(env)
    options = {"prompt": "a lantern", "checkpoint": "tiny-sd1", "steps": 6, "seed": 5}
    await services.guild_settings.reset(str(guild.id), None)
    # Every picture over the threshold: the real check's real score decides each preview too.
    await services.guild_settings.update(str(guild.id), None, {"nsfw_threshold": 0.0})
    try:
        since = len(env.http_requests)
        withheld = await alice.slash(channel, "imagine", **options)
        assert withheld.response.content.startswith("Nothing to show") and not withheld.response.attachments
        assert "Step " in " ".join(str(r.json) for r in env.http_requests[since:])  # it did show progress
        assert preview_uploads(env, since) == []  # but never a preview
        await services.guild_settings.update(str(guild.id), None, {"nsfw_pictures": "spoiler"})
        since = len(env.http_requests)
        await alice.slash(channel, "imagine", **options)
        shown = preview_uploads(env, since)
        assert "SPOILER_preview.png" in shown and "preview.png" not in shown
        since = len(env.http_requests)  # a DM allows by the bot's defaults: previews as they come
        await env.create_user("dora").slash("imagine", **options)
        assert "preview.png" in preview_uploads(env, since)
    finally:
        await services.guild_settings.reset(str(guild.id), None)


async def test_after_the_token_expired_no_preview_stays_behind(services: Services, every_event_edits) -> None:
    from bot.generation.checkpoint_ref import resolve_checkpoint

    async with clock_moving_env(services) as env:
        guild, channel, alice = world(env)
        try:
            await services.guild_settings.reset(str(guild.id), None)
            await services.guild_settings.update(str(guild.id), None, {"nsfw_threshold": 0.0})
            checkpoint = await resolve_checkpoint(services.registry, "tiny-sd1")
            for mode in ("spoiler", "withhold"):
                await services.guild_settings.update(str(guild.id), None, {"nsfw_pictures": mode})
                since = len(env.http_requests)
                if mode == "spoiler":  # the job runs and shows previews when the token dies
                    result = await alice.slash(
                        channel, "imagine", prompt="a patient fox", checkpoint="tiny-sd1", aspect="1:1", steps=150
                    )
                    await eventually(
                        lambda since=since: "SPOILER_preview.png" in preview_uploads(env, since), "a preview was shown"
                    )
                    [running] = [w for w in services.generation.status().workers if w.jobs]
                    held = HeldWorker(services.generation, running.jobs[0])  # still running when the token dies
                else:  # the job waits behind another when the token dies
                    block = await blocker(services.generation, checkpoint)
                    result = await alice.slash(
                        channel, "imagine", prompt="a patient fox", checkpoint="tiny-sd1", steps=6
                    )
                original = result.response
                await env.advance_time(901)  # 15 minutes later the interaction token is dead
                expired = len(env.http_requests)
                if mode == "withhold":
                    await block.release()
                else:
                    held.resume()

                def delivered(original: discord.Message = original) -> bool:  # the job runs now, in real time
                    [kept] = [m for m in channel.history() if m.id == original.id]
                    last = channel.last_message
                    return (last.id != original.id and bool(last.attachments)) or kept.content.startswith("Nothing")

                await eventually(delivered, "the job's result (or its refusal) was delivered")
                await env.settle(timeout=30)
                [kept] = [m for m in channel.history() if m.id == original.id]
                if mode == "spoiler":  # previews went on, through the channel, behind a spoiler
                    assert "SPOILER_preview.png" in preview_uploads(env, expired)
                    assert "preview.png" not in preview_uploads(env, since)
                    assert channel.last_message.attachments[0].filename.startswith("SPOILER_")
                    assert alice.mention in channel.last_message.content  # the result pings who asked
                else:  # nothing to show: said on the placeholder itself, once
                    assert preview_uploads(env, since) == []
                    assert kept.content.startswith("Nothing to show") and channel.last_message.id == original.id
                assert not kept.attachments and not kept.components  # no preview, no Cancel button left
        finally:
            await services.guild_settings.reset(str(guild.id), None)


async def test_a_database_that_refuses_bookkeeping_never_stops_a_delivery(
    env: simcord.Env, services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Disk full after the picture is made: the picture is posted all the same, the failed writes
    are logged and written once the database takes writes again."""
    import contextlib
    import sqlite3

    from bot.generation import store as store_module

    real = store_module.transaction
    full = {"on": True}

    class Refusing:
        def __init__(self, db) -> None:
            self.db = db

        async def execute(self, sql: str, params=()):
            if full["on"] and ("safety_json" in sql or "message_id" in sql):
                raise sqlite3.OperationalError("database or disk is full")
            return await self.db.execute(sql, params)

    @contextlib.asynccontextmanager
    async def refusing(db):
        async with real(db) as inner:
            yield Refusing(inner)

    monkeypatch.setattr(store_module, "transaction", refusing)
    _, channel, alice = world(env)
    result = await alice.slash(channel, "imagine", prompt="a full disk", checkpoint="tiny-sd1", steps=2, seed=3)
    assert result.response.attachments and result.response.embeds[0].title == "a full disk"
    job_id = result.response.embeds[0].footer.text.split()[1]
    record = await services.generation.get_job(job_id)
    assert record.row["state"] == "done" and record.row["message_id"] is None and record.row["safety_json"] is None
    full["on"] = False  # room again: the next write takes the notes along
    await services.generation.flush()
    record = await services.generation.get_job(job_id)
    assert record.row["message_id"] == str(result.response.id)
    assert json.loads(record.row["safety_json"])["verdicts"] == ["post"]
