"""/imagine and the buttons under every picture. Decisions live in bot.generation; this is glue."""

from __future__ import annotations

import asyncio
import io
import logging
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.errors import EaselError
from bot.generation.checkpoint_ref import CheckpointRef, resolve_checkpoint
from bot.generation.jobs import Cancelled, Failed, Finished, Job, Loading, Preview, Progress, Queued, Started
from bot.generation.policy import check_prompt
from bot.generation.requests import GenerationRequest
from bot.generation.service import JobHandle
from bot.generation.store import JobRecord
from bot.guilds.settings import Effective
from cogs.attachments import fit_image
from cogs.errors import answers_errors, refuse
from cogs.formatting import ASPECTS, CONTENT_MAX, clip, eta_text, nsfw_allowed, result_embed, size_for, where
from cogs.progress import EDIT_INTERVAL
from gpu_worker.protocol import SAMPLERS

if TYPE_CHECKING:
    from cogs.app import EaselBot

log = logging.getLogger(__name__)

VARIATIONS = 4  # pictures the Variations button asks for
JOB_ID = r"(?P<job>[0-9a-f]{12})"


class Generation(commands.Cog):
    def __init__(self, bot: EaselBot) -> None:
        self.bot = bot
        self.services = bot.services

    async def cog_load(self) -> None:
        # Buttons are matched by custom_id pattern, so they keep working after a restart.
        self.bot.add_dynamic_items(
            RerollButton, VariationsButton, ParametersButton, DeleteButton, CancelButton, OtherCheckpointSelect
        )

    @app_commands.command(name="imagine", description="Make a picture from a prompt with the checkpoint of your choice")
    @app_commands.describe(
        prompt="What to draw",
        negative="What to keep out of the picture",
        checkpoint="Which checkpoint (model) to use",
        aspect="Shape of the picture",
        steps="Denoising steps (more: slower, often finer)",
        cfg="How closely to follow the prompt (CFG scale)",
        sampler="Sampler, as named in the A1111 WebUI",
        seed="Seed; -1 for a random one",
        count="How many pictures",
    )
    @app_commands.choices(
        aspect=[app_commands.Choice(name=a, value=a) for a in ASPECTS],
        sampler=[app_commands.Choice(name=s, value=s) for s in SAMPLERS],
    )
    @app_commands.allowed_installs(guilds=True, users=True)
    @app_commands.allowed_contexts(guilds=True, dms=True, private_channels=True)
    async def imagine(
        self,
        interaction: discord.Interaction,
        prompt: app_commands.Range[str, 1, 1500],
        negative: app_commands.Range[str, 0, 1000] | None = None,
        checkpoint: str | None = None,
        aspect: str | None = None,
        steps: app_commands.Range[int, 1, 150] | None = None,
        cfg: app_commands.Range[float, 0.0, 30.0] | None = None,
        sampler: str | None = None,
        seed: app_commands.Range[int, -1, 4294967295] = -1,
        count: app_commands.Range[int, 1, 4] = 1,
    ) -> None:
        # Options left out take the channel's, then the server's, then the bot's defaults.
        await interaction.response.defer(thinking=True)  # first, before any work: Discord allows 3 s
        try:
            here = await self.here(interaction)
            ref = await self.pick_checkpoint(interaction, checkpoint, here)
            handle = await self.submit(
                interaction,
                ref,
                prompt=prompt,
                negative=negative,
                aspect=aspect,
                steps=steps,
                cfg=cfg,
                sampler=sampler,
                seed=seed,
                count=count,
            )
        except EaselError as e:
            await refuse(interaction, str(e))
            return
        await self.follow(interaction, handle)

    async def here(self, interaction: discord.Interaction) -> Effective:
        """The settings that apply where this interaction happened (channel, server, bot)."""
        return await self.services.guild_settings.effective(*where(interaction))

    def check_allowed(self, interaction: discord.Interaction, here: Effective, ref: CheckpointRef) -> None:
        here.check_checkpoint(ref.name, ref.sha256, ref.nsfw, nsfw_allowed(interaction))

    async def submit(
        self,
        interaction: discord.Interaction,
        ref: CheckpointRef,
        *,
        prompt: str,
        here: Effective | None = None,
        negative: str | None = None,
        aspect: str | None = None,
        steps: int | None = None,
        cfg: float | None = None,
        sampler: str | None = None,
        seed: int = -1,
        count: int = 1,
    ) -> JobHandle:
        """Queue a job from a front end (slash command, modal); options left as None take the defaults here."""
        here = here or await self.here(interaction)
        self.check_allowed(interaction, here, ref)
        check_prompt(prompt, here.blocked_words)
        steps = here.steps if steps is None else steps
        here.check_request(steps, count)
        width, height = size_for(aspect or here.aspect, ref.native_size)
        request = request_from(
            interaction,
            prompt=prompt,
            negative=here.negative if negative is None else negative,
            width=width,
            height=height,
            steps=steps,
            cfg=here.cfg if cfg is None else cfg,
            sampler=sampler or here.sampler,
            seed=seed,
            count=count,
        )
        return await self.services.generation.submit(request, ref)

    @imagine.autocomplete("checkpoint")
    async def checkpoint_autocomplete(
        self, interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        here, adult = await self.here(interaction), nsfw_allowed(interaction)
        entries = [
            e for e in await self.services.registry.list(status="present") if e.runnable and here.visible(e, adult)
        ]
        needle = current.lower().strip()
        scored = []
        for entry in entries:
            haystack = f"{entry.name} {entry.display_name} {' '.join(entry.tags)}".lower()
            if not needle or needle in haystack:
                scored.append((0 if entry.name.startswith(needle) else 1, entry.name, entry))
            elif all(part in haystack for part in needle.split()):
                scored.append((2, entry.name, entry))
        scored.sort(key=lambda item: item[:2])
        return [
            app_commands.Choice(name=clip(f"{e.name} · {e.architecture}", 100), value=e.name[:100])
            for _, _, e in scored[:25]
        ]

    async def pick_checkpoint(
        self, interaction: discord.Interaction, name: str | None, here: Effective
    ) -> CheckpointRef:
        """The named checkpoint, else the default set here, else the first one that may be used here."""
        if name:
            return await resolve_checkpoint(self.services.registry, name)
        if here.checkpoint:
            entry = await self.services.registry.find(here.checkpoint)
            if entry is not None and entry.status == "present" and entry.runnable:
                return CheckpointRef.from_entry(entry)
        adult = nsfw_allowed(interaction)
        for entry in await self.services.registry.list(status="present"):
            if entry.runnable and here.visible(entry, adult):
                return CheckpointRef.from_entry(entry)
        raise EaselError("no checkpoint is installed yet; ask the bot's owner to add one")

    async def follow(self, interaction: discord.Interaction, handle: JobHandle) -> None:
        """Edit one message from queued to progress to the finished picture."""
        job = handle.job
        status = StatusMessage(interaction, job)
        while True:
            event = await self.bot.wait_external(handle.next_event(), f"job {job.id} on the GPU worker")
            if isinstance(event, Queued):
                await status.show(f"Queued: #{event.position} in line{eta_text(event.eta_seconds)}.", force=True)
            elif isinstance(event, Started):
                await status.show("Starting…", force=True)
            elif isinstance(event, Loading):
                await status.show(f"Loading {event.checkpoint}…" if event.cache == "disk" else "Starting…")
            elif isinstance(event, Progress):
                await status.show(
                    f"Step {event.step}/{event.total} · {event.it_per_s:.1f} it/s{eta_text(event.eta_seconds)}"
                )
            elif isinstance(event, Preview):
                status.preview = event.png
            elif isinstance(event, Finished):
                await self.deliver(interaction, event.job)
                return
            elif isinstance(event, Failed):
                await status.show(f"⚠️ {event.message}", force=True, final=True)
                return
            elif isinstance(event, Cancelled):
                await status.show(f"Cancelled (job {job.id}).", force=True, final=True)
                return

    async def deliver(self, interaction: discord.Interaction, job: Job) -> None:
        # Discord's attachment_size_limit applies to the whole message: share it between the pictures.
        per_file = (interaction.filesize_limit or 10 * 1024 * 1024) // max(1, len(job.images))
        here = await self.here(interaction)
        files, shrunk = [], False
        for i, image in enumerate(job.images):
            data, extension = await asyncio.to_thread(fit_image, image.png, per_file)
            shrunk |= extension != "png"
            name = f"{job.id}-{i}-{image.seed}.{extension}"
            files.append(discord.File(io.BytesIO(data), filename=name, spoiler=here.spoiler))
        embed = result_embed(job, interaction.user.display_name)
        notes = []
        if shrunk:
            notes.append("Re-encoded to fit Discord's upload limit; **Parameters** has every setting.")
        if here.spoiler:
            notes.append("This server shows pictures behind a spoiler: click them to see.")
        elif files:
            embed.set_image(url=f"attachment://{files[0].filename}")  # the first picture inside the embed
        embed.description = "\n".join(notes) or None
        view = result_view(job.id, await self.other_checkpoints(interaction, job, here))
        message = await post_result(interaction, embed=embed, files=files, view=view, what=f"job {job.id}")
        if message is not None:
            await self.services.generation.store.set_message(job.id, str(message.id))

    async def rerun(
        self,
        interaction: discord.Interaction,
        job_id: str,
        *,
        seed: Callable[[JobRecord], int] = lambda record: -1,
        count: int | None = None,
        checkpoint: str | None = None,
    ) -> None:
        """Another job from a stored one: new seed(s), more pictures, or another checkpoint.

        `seed` picks the first seed from the stored job (-1: a random one)."""
        record = await self.services.generation.get_job(job_id)
        if record is None:
            await refuse(interaction, f"job {job_id} is not in the records any more")
            return
        await interaction.response.defer(thinking=True)
        row = record.row
        try:
            ref = await resolve_checkpoint(self.services.registry, checkpoint or row["checkpoint_sha256"])
            here = await self.here(interaction)  # the rules of the place the button was pressed in
            self.check_allowed(interaction, here, ref)
            check_prompt(row["prompt"], here.blocked_words)
            here.check_request(row["steps"], count or len(record.seeds))
            width, height = row["width"], row["height"]
            if ref.sha256 != row["checkpoint_sha256"]:  # same shape, at the new model's native size
                width, height = rescale(width, height, ref.native_size)
            request = request_from(
                interaction,
                prompt=row["prompt"],
                negative=row["negative"],
                width=width,
                height=height,
                steps=row["steps"],
                cfg=row["cfg"],
                sampler=row["sampler"],
                schedule=row["schedule"],
                seed=seed(record),
                count=count or len(record.seeds),
                clip_skip=row["clip_skip"],
            )
            handle = await self.services.generation.submit(request, ref)
        except EaselError as e:
            await refuse(interaction, str(e))
            return
        await self.follow(interaction, handle)

    async def other_checkpoints(
        self, interaction: discord.Interaction, job: Job, here: Effective
    ) -> list[discord.SelectOption]:
        adult = nsfw_allowed(interaction)
        entries = await self.services.registry.list(status="present")
        return [
            discord.SelectOption(label=clip(e.name, 100), description=clip(e.architecture, 100), value=e.name[:100])
            for e in entries
            if e.runnable and e.sha256 != job.spec.checkpoint.sha256 and here.visible(e, adult)
        ][:25]


class StatusMessage:
    """The job's message while it waits and runs: edited at most once per EDIT_INTERVAL."""

    def __init__(self, interaction: discord.Interaction, job: Job) -> None:
        self.interaction = interaction
        self.job = job
        self.preview: bytes | None = None
        self._last_edit = 0.0
        self._expired = False

    async def show(self, text: str, *, force: bool = False, final: bool = False) -> None:
        now = time.monotonic()
        if self._expired or (not force and now - self._last_edit < EDIT_INTERVAL):
            return
        self._last_edit = now
        content = clip(f"{text}\n-# job {self.job.id}", CONTENT_MAX)
        attachments = []
        if self.preview is not None and not final:
            attachments = [discord.File(io.BytesIO(self.preview), filename="preview.png")]
        view = None if final else discord.ui.View(timeout=None).add_item(CancelButton(self.job.id))
        try:
            await self.interaction.edit_original_response(content=content, attachments=attachments, view=view)
        except (discord.NotFound, discord.HTTPException):
            self._expired = True  # the token is dead; the result will be posted to the channel


def request_from(interaction: discord.Interaction, **fields: Any) -> GenerationRequest:
    """A generation request on behalf of whoever is behind this interaction, where it happened."""
    return GenerationRequest(
        requester_id=str(interaction.user.id),
        requester_name=interaction.user.display_name,
        guild_id=str(interaction.guild_id) if interaction.guild_id else None,
        channel_id=str(interaction.channel_id) if interaction.channel_id else None,
        **fields,
    )


async def post_result(
    interaction: discord.Interaction,
    *,
    embed: discord.Embed,
    files: list[discord.File],
    view: discord.ui.View | Any = discord.utils.MISSING,
    what: str,
) -> discord.Message | None:
    """Replace the deferred placeholder with the result; after the token's 15 minutes, post to the channel."""
    try:
        return await interaction.edit_original_response(content=None, embed=embed, attachments=files, view=view)
    except (discord.NotFound, discord.HTTPException) as e:
        # The interaction token lives 15 minutes; a long queue outlives it. Post instead.
        if not isinstance(e, discord.NotFound) and getattr(e, "code", None) not in (10015, 50027):
            raise
        channel = interaction.channel
        if channel is None:
            log.warning("%s: token expired and no channel to post to", what)
            return None
        for file in files:
            file.reset()
        return await channel.send(
            content=f"{interaction.user.mention}, your picture is ready.", embed=embed, files=files, view=view
        )


def result_view(job_id: str, checkpoints: list[discord.SelectOption]) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    for item in (RerollButton(job_id), VariationsButton(job_id), ParametersButton(job_id), DeleteButton(job_id)):
        view.add_item(item)
    if checkpoints:
        view.add_item(OtherCheckpointSelect(job_id, checkpoints))
    return view


def rescale(width: int, height: int, native: int) -> tuple[int, int]:
    """The same shape with the area of `native`², on the grid size_for uses."""
    grid = 64 if native >= 512 else 8
    factor = (native * native / (width * height)) ** 0.5
    return max(grid, round(width * factor / grid) * grid), max(grid, round(height * factor / grid) * grid)


def _cog(interaction: discord.Interaction) -> Generation:
    cog = interaction.client.get_cog("Generation")
    assert isinstance(cog, Generation)
    return cog


def _is_moderator(interaction: discord.Interaction) -> bool:
    return interaction.guild is not None and interaction.permissions.manage_messages


class FromJobId:
    """Rebuilds a persistent button from its custom_id, whose template captures the job id."""

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Item, match: re.Match[str]):
        return cls(match["job"])


class RerollButton(FromJobId, discord.ui.DynamicItem[discord.ui.Button], template=r"easel:reroll:" + JOB_ID):
    def __init__(self, job_id: str) -> None:
        super().__init__(discord.ui.Button(label="Reroll", emoji="🎲", custom_id=f"easel:reroll:{job_id}"))
        self.job_id = job_id

    @answers_errors
    async def callback(self, interaction: discord.Interaction) -> None:
        await _cog(interaction).rerun(interaction, self.job_id)


class VariationsButton(FromJobId, discord.ui.DynamicItem[discord.ui.Button], template=r"easel:vary:" + JOB_ID):
    """Same prompt and settings, the next four seeds after the ones already shown."""

    def __init__(self, job_id: str) -> None:
        super().__init__(discord.ui.Button(label="Variations", emoji="🔀", custom_id=f"easel:vary:{job_id}"))
        self.job_id = job_id

    @answers_errors
    async def callback(self, interaction: discord.Interaction) -> None:
        await _cog(interaction).rerun(
            interaction, self.job_id, seed=lambda record: (record.seeds[-1] + 1) % 2**32, count=VARIATIONS
        )


class OtherCheckpointSelect(discord.ui.DynamicItem[discord.ui.Select], template=r"easel:other:" + JOB_ID):
    """The same prompt, settings and seed with another checkpoint: the honest comparison."""

    def __init__(self, job_id: str, options: list[discord.SelectOption] | None = None) -> None:
        select = discord.ui.Select(
            placeholder="Same settings with another checkpoint…",
            options=options or [],
            custom_id=f"easel:other:{job_id}",
        )
        super().__init__(select)
        self.job_id = job_id

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Select, match
    ) -> OtherCheckpointSelect:
        return cls(match["job"], item.options)

    @answers_errors
    async def callback(self, interaction: discord.Interaction) -> None:
        [name] = self.item.values
        await _cog(interaction).rerun(interaction, self.job_id, seed=lambda record: record.seeds[0], checkpoint=name)


class ParametersButton(FromJobId, discord.ui.DynamicItem[discord.ui.Button], template=r"easel:params:" + JOB_ID):
    def __init__(self, job_id: str) -> None:
        super().__init__(discord.ui.Button(label="Parameters", emoji="📋", custom_id=f"easel:params:{job_id}"))
        self.job_id = job_id

    @answers_errors
    async def callback(self, interaction: discord.Interaction) -> None:
        record = await _cog(interaction).services.generation.get_job(self.job_id)
        if record is None or not record.infotexts:
            await refuse(interaction, f"no parameters are stored for job {self.job_id}")
            return
        text = "\n\n".join(record.infotexts)
        await interaction.response.send_message(f"```\n{clip(text, CONTENT_MAX - 8)}\n```", ephemeral=True)


class DeleteButton(FromJobId, discord.ui.DynamicItem[discord.ui.Button], template=r"easel:delete:" + JOB_ID):
    def __init__(self, job_id: str) -> None:
        super().__init__(
            discord.ui.Button(
                label="Delete", emoji="🗑️", style=discord.ButtonStyle.danger, custom_id=f"easel:delete:{job_id}"
            )
        )
        self.job_id = job_id

    @answers_errors
    async def callback(self, interaction: discord.Interaction) -> None:
        record = await _cog(interaction).services.generation.get_job(self.job_id)
        owner = record is not None and record.row["requester_id"] == str(interaction.user.id)
        if not (owner or _is_moderator(interaction)):
            await refuse(interaction, "only the person who asked for this picture (or a moderator) can delete it")
            return
        await interaction.response.defer()
        await interaction.delete_original_response()


class CancelButton(FromJobId, discord.ui.DynamicItem[discord.ui.Button], template=r"easel:cancel:" + JOB_ID):
    def __init__(self, job_id: str) -> None:
        super().__init__(discord.ui.Button(label="Cancel", emoji="✖️", custom_id=f"easel:cancel:{job_id}"))
        self.job_id = job_id

    @answers_errors
    async def callback(self, interaction: discord.Interaction) -> None:
        requester = None if _is_moderator(interaction) else str(interaction.user.id)
        try:
            outcome = await _cog(interaction).services.generation.cancel(self.job_id, requester_id=requester)
        except EaselError as e:
            await refuse(interaction, str(e))
            return
        await interaction.response.send_message(
            "Cancelled." if outcome == "cancelled" else "Cancelling…", ephemeral=True
        )


async def setup(bot: EaselBot) -> None:
    await bot.add_cog(Generation(bot))
