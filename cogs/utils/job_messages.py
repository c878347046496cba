"""The Discord side of a job: one message from queued to progress to the picture, and the persistent
buttons under it. Whether and how a job runs is decided in bot/jobs.py; this only shows it.

Every entry point that starts a job — /imagine, the buttons here, the prompt modals, compare —
calls `run_plan`: queue what bot/jobs.py planned, then follow it to its result.
"""

from __future__ import annotations

import asyncio
import io
import logging
import re
from typing import TYPE_CHECKING, Any

import discord

from bot.generation.jobs import Cancelled, Failed, Finished, Job, Loading, Preview, Progress, Queued, Started
from bot.jobs import UPSCALE, VARY_STRONG, VARY_SUBTLE, JobPlan, MissingCheckpoint, reroll, same_seed
from bot.rules.policy import readable_score
from cogs.utils.attachments import fit_image, read_attachment
from cogs.utils.context import asker, place
from cogs.utils.errors import AnsweringModal, answers_errors, refuse
from cogs.utils.formatting import CONTENT_MAX, clip, code_block, eta_text, result_embed
from cogs.utils.progress import Throttle
from common.errors import EaselError

if TYPE_CHECKING:
    from bot.generation.service import JobHandle
    from bot.services import Services
    from cogs.app import EaselBot

log = logging.getLogger(__name__)

JOB_ID = r"(?P<job>[0-9a-f]{12})"


def services_of(interaction: discord.Interaction) -> Services:
    bot: EaselBot = interaction.client  # type: ignore[assignment]
    return bot.services


async def run_plan(interaction: discord.Interaction, plan: JobPlan) -> None:
    """Queue a planned job (the interaction is already deferred) and follow it to its picture."""
    [handle] = await services_of(interaction).jobs.start(plan)
    await follow(interaction, handle, plan)


async def follow(interaction: discord.Interaction, handle: JobHandle, plan: JobPlan) -> None:
    """Edit one message from queued to progress to the finished picture."""
    bot: EaselBot = interaction.client  # type: ignore[assignment]
    job = handle.job
    status = StatusMessage(interaction, job, plan)
    while True:
        poll = services_of(interaction).generation.place_poll()
        event = await bot.wait_external(handle.next_event(poll), f"job {job.id} on the GPU worker")
        if isinstance(event, Queued):
            await status.show(f"Queued: #{event.position} in line{eta_text(event.eta_seconds)}.", force=True)
        elif isinstance(event, Started):
            await status.show("Starting…", force=True)
        elif isinstance(event, Loading):
            shown = {"disk": f"Loading {event.checkpoint}…", "fetch": f"Fetching {event.checkpoint}…"}
            await status.show(shown.get(event.cache, "Starting…"))
        elif isinstance(event, Progress):
            await status.show(
                f"Step {event.step}/{event.total} · {event.it_per_s:.1f} it/s{eta_text(event.eta_seconds)}"
            )
        elif isinstance(event, Preview):  # shown at once: a late one would wait for a step that never comes
            status.offer_preview(event)
            await status.refresh()
        elif isinstance(event, Finished):
            await deliver(interaction, event.job, plan, status)
            return
        elif isinstance(event, Failed):
            await status.show(f"⚠️ {event.message}", force=True, final=True)
            return
        elif isinstance(event, Cancelled):
            await status.show(f"Cancelled (job {job.id}).", force=True, final=True)
            return


async def deliver(interaction: discord.Interaction, job: Job, plan: JobPlan, status: StatusMessage | None = None) -> None:
    services = services_of(interaction)
    # The picture check's score for each picture, and what this place does with it (bot/jobs.py).
    verdicts = [plan.verdict(image.nsfw_score) for image in job.images]
    unchecked = sum(readable_score(image.nsfw_score) is None and verdicts[i] == "withhold" for i, image in enumerate(job.images))
    if unchecked:
        log.warning("job %s: %d picture(s) came back without a readable picture-check score; withheld", job.id, unchecked)
    await services.generation.store.set_safety(job.id, [image.nsfw_score for image in job.images], verdicts)
    shown = [(i, image) for i, image in enumerate(job.images) if verdicts[i] != "withhold"]
    withheld = len(job.images) - len(shown)
    if withheld:
        await tell_withheld(interaction, job.id, withheld, len(job.images), status, unchecked=bool(unchecked))
    if not shown:
        return
    # Its ControlNet units' maps, each judged as a picture, after the pictures.
    maps = [(i, shown_map) for i, shown_map in enumerate(job.maps) if plan.verdict(shown_map.nsfw_score) != "withhold"]
    # Discord's attachment_size_limit applies to the whole message: share it between the pictures.
    per_file = (interaction.filesize_limit or 10 * 1024 * 1024) // max(1, len(shown) + len(maps))
    files, shrunk = [], False
    spoiler = plan.spoiler or any(verdicts[i] == "spoiler" for i, _ in shown)
    for i, image in shown:
        data, extension = await asyncio.to_thread(fit_image, image.png, per_file)
        shrunk |= extension != "png"
        hidden = plan.spoiler or verdicts[i] == "spoiler"
        files.append(discord.File(io.BytesIO(data), filename=f"{job.id}-{i}-{image.seed}.{extension}", spoiler=hidden))
    for i, shown_map in maps:
        data, extension = await asyncio.to_thread(fit_image, shown_map.png, per_file)
        hidden = plan.spoiler or plan.verdict(shown_map.nsfw_score) == "spoiler"
        files.append(discord.File(io.BytesIO(data), filename=f"{job.id}-control-{i}.{extension}", spoiler=hidden))
    embed = result_embed(job, interaction.user.display_name)
    notes = [*job.spec.notes, *job.said]
    if maps:
        notes.append(f"The ControlNet map{'s' if len(maps) > 1 else ''} it followed: the last attachment{'s' if len(maps) > 1 else ''}.")
    if shrunk:
        notes.append("Re-encoded to fit Discord's upload limit; **Parameters** has every setting.")
    if withheld:
        notes.append(f"{withheld} of {len(job.images)} pictures withheld by the picture check.")
    if plan.spoiler:
        notes.append("This server shows pictures behind a spoiler: click them to see.")
    elif spoiler:
        notes.append("The picture check found what may be nudity: click to see.")
    elif files:
        embed.set_image(url=f"attachment://{files[0].filename}")  # the first picture inside the embed
    embed.description = "\n".join(notes) or None
    others = [
        discord.SelectOption(label=clip(e.name, 100), description=clip(e.architecture, 100), value=e.name[:100])
        for e in await services.jobs.offered(place(interaction))
        if e.sha256 != job.spec.checkpoint.sha256
    ][:25]
    hands = await services.detectors.for_target("hands") is not None  # Fix hands only where a hand detector is
    view = result_view(job.id, others, edited=bool(job.spec.parameters.edit_images), hands=hands)
    message = await post_result(interaction, embed=embed, files=files, view=view, what=f"job {job.id}", status=status)
    if message is not None:
        await services.generation.store.set_message(job.id, str(message.id))


async def tell_withheld(
    interaction: discord.Interaction,
    job_id: str,
    withheld: int,
    total: int,
    status: StatusMessage | None = None,
    *,
    unchecked: bool = False,
) -> None:
    """The requester hears privately why; the channel sees only that nothing was posted."""
    everything = withheld == total
    if everything:
        await post_result(
            interaction,
            embed=None,
            files=[],
            view=None,
            what=f"job {job_id}",
            content=f"Nothing to show (job {job_id}).",
            status=status,
        )
    what = "The picture was" if total == 1 else (f"{withheld} of {total} pictures were" if not everything else "The pictures were")
    why = (
        "the picture check could not score it, and this channel shows only checked pictures. Try again, "
        "or ask the bot's owner to look at the GPU worker's log."
        if unchecked
        else "the picture check found what may be nudity, which this channel does not show. "
        "Run it again in an age-restricted channel or in a DM with the bot."
    )
    try:
        await interaction.followup.send(f"{what} withheld: {why}", ephemeral=True)
    except discord.HTTPException:  # the token's 15 minutes are over: no private message can be sent
        log.info("job %s: withheld, and the requester could not be told privately (token expired)", job_id)


async def post_result(
    interaction: discord.Interaction,
    *,
    embed: discord.Embed | None,
    files: list[discord.File],
    view: discord.ui.View | Any = discord.utils.MISSING,
    what: str,
    content: str | None = None,
    status: StatusMessage | None = None,
) -> discord.Message | None:
    """Replace the deferred placeholder with the result; after the token's 15 minutes, post to the
    channel, and take the placeholder's last preview and Cancel button off (`status`)."""
    try:
        return await interaction.edit_original_response(content=content, embed=embed, attachments=files, view=view)
    except (discord.NotFound, discord.HTTPException) as e:
        # The interaction token lives 15 minutes; a long queue outlives it. Post instead.
        if not isinstance(e, discord.NotFound) and getattr(e, "code", None) not in (10015, 50027):
            raise
        if status is not None:  # a text alone ("Nothing to show") goes on the placeholder itself
            if await status.close(content or "Finished: see below.") and not files and embed is None:
                return None
        channel = interaction.channel
        if channel is None:
            log.warning("%s: token expired and no channel to post to", what)
            return None
        for file in files:
            file.reset()
        return await channel.send(
            content=content or f"{interaction.user.mention}, your picture is ready.", embed=embed, files=files, view=view
        )


class StatusMessage:
    """The job's message while it waits and runs: edited at most once per EDIT_INTERVAL.

    Previews are pictures like any other: each comes scored by the picture check, and is shown only
    as this place would show the finished picture (posted, behind a spoiler, or not at all). Once one
    is withheld, none of that job's later previews is shown. After the interaction token's 15
    minutes the bot edits the message through the channel instead, so a preview never stays behind."""

    def __init__(self, interaction: discord.Interaction, job: Job, plan: JobPlan) -> None:
        self.interaction = interaction
        self.job = job
        self.plan = plan
        self.preview: discord.File | None = None
        self.previews_withheld = False
        self._throttle = Throttle()
        self._text = "Starting…"  # the last state shown, which a new preview is shown under
        self._expired = False
        self._message_id: int | None = None

    def offer_preview(self, preview: Preview) -> None:
        verdict = self.plan.verdict(preview.nsfw_score)
        if verdict == "withhold" or self.previews_withheld:
            self.previews_withheld, self.preview = True, None  # the next edit takes the last one off
            return
        spoiler = self.plan.spoiler or verdict == "spoiler"
        self.preview = discord.File(io.BytesIO(preview.png), filename="preview.png", spoiler=spoiler)

    async def show(self, text: str, *, force: bool = False, final: bool = False) -> None:
        self._text = text
        if not self._throttle.ready(force=force):
            return
        content = clip(f"{text}\n-# job {self.job.id}", CONTENT_MAX)
        attachments = []
        if self.preview is not None and not final:
            self.preview.reset()
            attachments = [self.preview]
        view = None if final else discord.ui.View(timeout=None).add_item(CancelButton(self.job.id))
        await self._edit(content=content, attachments=attachments, view=view)

    async def refresh(self) -> None:
        """The last state again, with the preview as it now is (when the edit rate allows)."""
        await self.show(self._text)

    async def close(self, text: str) -> bool:
        """The message's last state once the result went elsewhere: `text`, no preview, no Cancel
        button. False when the message could not be edited."""
        return await self._edit(content=clip(f"{text}\n-# job {self.job.id}", CONTENT_MAX), attachments=[], view=None)

    async def _edit(self, **fields: Any) -> bool:
        if not self._expired:
            try:
                message = await self.interaction.edit_original_response(**fields)
                self._message_id = message.id
                return True
            except (discord.NotFound, discord.HTTPException):
                self._expired = True  # the token is dead; the result will be posted to the channel
        channel = self.interaction.channel
        if self._message_id is None or channel is None or not hasattr(channel, "get_partial_message"):
            return False
        try:  # the bot's own message, edited with the bot's own token
            await channel.get_partial_message(self._message_id).edit(**fields)
        except discord.HTTPException as e:
            log.warning("job %s: could not edit its message after the token expired: %s", self.job.id, e)
            return False
        return True


def result_view(
    job_id: str, checkpoints: list[discord.SelectOption], *, edited: bool = False, hands: bool = False
) -> discord.ui.View:
    view = discord.ui.View(timeout=None)
    buttons = (
        RerollButton(job_id),
        EditButton(job_id, again=edited),
        UpscaleButton(job_id),
        VaryButton(job_id),
        VaryButton(job_id, strong=True),
        FixFacesButton(job_id),
        *((FixFacesButton(job_id, hands=True),) if hands else ()),
    )
    for item in (*buttons, ParametersButton(job_id), DeleteButton(job_id)):
        view.add_item(item)
    if checkpoints:
        view.add_item(OtherCheckpointSelect(job_id, checkpoints))
    return view


# --- persistent buttons: matched by custom_id pattern, so they keep working after a restart -----------


class FromJobId:
    """Rebuilds a persistent button from its custom_id, whose template captures the job id."""

    job_id: str

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Item, match: re.Match[str]):
        return cls(match["job"])  # type: ignore[call-arg]

    async def rerun(self, interaction: discord.Interaction, **how: Any) -> None:
        """Another job from this one, under the rules of the place where the button was pressed."""
        jobs = services_of(interaction).jobs
        await interaction.response.defer(thinking=True)
        plan = await jobs.plan_rerun(asker(interaction), place(interaction), self.job_id, **how)
        await run_plan(interaction, plan)


class RerollButton(FromJobId, discord.ui.DynamicItem[discord.ui.Button], template=r"easel:reroll:" + JOB_ID):
    def __init__(self, job_id: str) -> None:
        super().__init__(discord.ui.Button(label="Reroll", emoji="🎲", custom_id=f"easel:reroll:{job_id}"))
        self.job_id = job_id

    @answers_errors
    async def callback(self, interaction: discord.Interaction) -> None:
        await self.rerun(interaction, seed=reroll)


class UpscaleButton(FromJobId, discord.ui.DynamicItem[discord.ui.Button], template=r"easel:upscale:" + JOB_ID):
    """The same job, same seed, with A1111's hires fix at twice the size (or, for a picture made from a
    picture, that picture redrawn at twice its size)."""

    def __init__(self, job_id: str) -> None:
        super().__init__(discord.ui.Button(label="Upscale", emoji="🔍", custom_id=f"easel:upscale:{job_id}"))
        self.job_id = job_id

    @answers_errors
    async def callback(self, interaction: discord.Interaction) -> None:
        await interaction.response.defer(thinking=True)
        # A picture made from a picture is enlarged from itself (bot/jobs.py decides), so it goes along.
        picture = first_picture(interaction)
        plan = await services_of(interaction).jobs.plan_rerun(
            asker(interaction),
            place(interaction),
            self.job_id,
            seed=same_seed,
            hires_scale=UPSCALE,
            init_image=await read_attachment(picture) if picture is not None else None,
        )
        await run_plan(interaction, plan)


class FixFacesButton(FromJobId, discord.ui.DynamicItem[discord.ui.Button], template=r"easel:(?P<target>faces|hands):" + JOB_ID):
    """The same job, same seed, with the detail pass (common/detail.py): each face (or, where a hand
    detector is installed, each hand) found redrawn at full size and pasted back, as ADetailer does."""

    def __init__(self, job_id: str, hands: bool = False) -> None:
        target = "hands" if hands else "faces"
        label, emoji = ("Fix hands", "✋") if hands else ("Fix faces", "🙂")
        super().__init__(discord.ui.Button(label=label, emoji=emoji, custom_id=f"easel:{target}:{job_id}"))
        self.job_id = job_id
        self.target = target

    @classmethod
    async def from_custom_id(
        cls, interaction: discord.Interaction, item: discord.ui.Button, match: re.Match[str]
    ) -> FixFacesButton:
        return cls(match["job"], hands=match["target"] == "hands")

    @answers_errors
    async def callback(self, interaction: discord.Interaction) -> None:
        await self.rerun(interaction, seed=same_seed, detail=self.target)


def first_picture(interaction: discord.Interaction) -> discord.Attachment | None:
    """The result's picture, if the message still has one."""
    attachments = interaction.message.attachments if interaction.message else []
    pictures = [a for a in attachments if a.filename.lower().endswith((".png", ".jpg", ".jpeg", ".webp"))]
    return pictures[0] if pictures else None


class EditButton(FromJobId, discord.ui.DynamicItem[discord.ui.Button], template=r"easel:edit:" + JOB_ID):
    """The result's picture edited as a modal asks (common/editing.py), by the edit model this job ran
    on, else this place's edit model."""

    def __init__(self, job_id: str, *, again: bool = False) -> None:
        label = "Edit again" if again else "Edit"  # under an edit's result: its picture edited once more
        super().__init__(discord.ui.Button(label=label, emoji="✏️", custom_id=f"easel:edit:{job_id}"))
        self.job_id = job_id

    @answers_errors
    async def callback(self, interaction: discord.Interaction) -> None:
        picture = first_picture(interaction)
        if picture is None:
            raise EaselError("this message has no picture left to edit")
        link = interaction.message.jump_url if interaction.message else ""
        credit = f"Edited from [job {self.job_id}]({link})" if link else f"Edited from job {self.job_id}"
        await interaction.response.send_modal(EditModal(picture, credit, after_job=self.job_id))


class EditModal(AnsweringModal, title="Edit the picture"):
    """What to change in a picture: after the Edit button, or "Edit with Easel" on any message."""

    instruction = discord.ui.TextInput(
        label="What to change",
        placeholder="make it night · put a hat on the cat · turn it into a watercolour",
        style=discord.TextStyle.paragraph,
        max_length=1500,
        custom_id="instruction",
    )

    def __init__(self, picture: discord.Attachment, credit: str, *, after_job: str | None = None) -> None:
        super().__init__(timeout=None)
        self.picture = picture
        self.credit = credit
        self.after_job = after_job

    async def on_submit(self, interaction: discord.Interaction) -> None:
        await interaction.response.defer(thinking=True)
        jobs = services_of(interaction).jobs
        plan = await jobs.plan_edit(
            asker(interaction),
            place(interaction),
            str(self.instruction),
            [await read_attachment(self.picture)],
            after_job=self.after_job,
            credit=self.credit,
        )
        await run_plan(interaction, plan)


class MakeThisHereButton(discord.ui.DynamicItem[discord.ui.Button], template=r"easel:remake:(?P<key>[0-9a-f]{64})"):
    """/pnginfo's "Make this here": the picture's parameters, kept by their hash, run here."""

    def __init__(self, key: str) -> None:
        super().__init__(discord.ui.Button(label="Make this here", emoji="🖌️", custom_id=f"easel:remake:{key}"))
        self.key = key

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Item, match: re.Match[str]):
        return cls(match["key"])

    @answers_errors
    async def callback(self, interaction: discord.Interaction) -> None:
        services = services_of(interaction)
        await interaction.response.defer(thinking=True)
        info = await services.jobs.kept_parameters(self.key)
        try:
            plan = await services.jobs.plan_from_infotext(asker(interaction), place(interaction), info)
        except MissingCheckpoint as missing:
            raise EaselError(f"{missing}{await instead(services, missing)}") from None
        await run_plan(interaction, plan)


async def instead(services: Services, missing: MissingCheckpoint) -> str:
    """What the catalog suggests in place of a checkpoint that is not installed: the best installed fit."""
    question = missing.model.replace("_", " ").replace("-", " ")
    answer = await services.catalog.search(question, limit=5, wait_for_model=False)
    found = next((hit.entry for hit in answer.installed), None)
    return f"; the nearest installed one is {found.name} (/checkpoints info {found.name})" if found else ""


class VaryButton(FromJobId, discord.ui.DynamicItem[discord.ui.Button], template=r"easel:vary(?P<strong>x?):" + JOB_ID):
    """The picture redrawn from itself with a new seed: a little (subtle) or a lot (strong).

    `easel:vary:` was once "the next four seeds"; such buttons on old messages now vary subtly.
    """

    def __init__(self, job_id: str, *, strong: bool = False) -> None:
        label, key = ("Vary (strong)", "varyx") if strong else ("Vary (subtle)", "vary")
        super().__init__(discord.ui.Button(label=label, emoji="🔀", custom_id=f"easel:{key}:{job_id}"))
        self.job_id = job_id
        self.strong = strong

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Item, match: re.Match[str]):
        return cls(match["job"], strong=bool(match["strong"]))

    @answers_errors
    async def callback(self, interaction: discord.Interaction) -> None:
        await interaction.response.defer(thinking=True)
        picture = first_picture(interaction)
        if picture is None:
            raise EaselError("this message has no picture left to vary")
        plan = await services_of(interaction).jobs.plan_rerun(
            asker(interaction),
            place(interaction),
            self.job_id,
            seed=reroll,
            init_image=await read_attachment(picture),
            strength=VARY_STRONG if self.strong else VARY_SUBTLE,
        )
        await run_plan(interaction, plan)


class OtherCheckpointSelect(FromJobId, discord.ui.DynamicItem[discord.ui.Select], template=r"easel:other:" + JOB_ID):
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
        cls, interaction: discord.Interaction, item: discord.ui.Select, match: re.Match[str]
    ) -> OtherCheckpointSelect:
        return cls(match["job"], item.options)

    @answers_errors
    async def callback(self, interaction: discord.Interaction) -> None:
        [name] = self.item.values
        await self.rerun(interaction, seed=same_seed, checkpoint=name)


class ParametersButton(FromJobId, discord.ui.DynamicItem[discord.ui.Button], template=r"easel:params:" + JOB_ID):
    def __init__(self, job_id: str) -> None:
        super().__init__(discord.ui.Button(label="Parameters", emoji="📋", custom_id=f"easel:params:{job_id}"))
        self.job_id = job_id

    @answers_errors
    async def callback(self, interaction: discord.Interaction) -> None:
        record = await services_of(interaction).generation.get_job(self.job_id)
        if record is None or not record.infotexts:
            await refuse(interaction, f"no parameters are stored for job {self.job_id}")
            return
        await interaction.response.send_message(code_block("\n\n".join(record.infotexts)), ephemeral=True)


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
        services = services_of(interaction)
        record = await services.generation.get_job(self.job_id)
        if not services.jobs.may_change(asker(interaction), record.row["requester_id"] if record else None):
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
        services = services_of(interaction)
        who = asker(interaction)
        # A moderator cancels anyone's job; anyone else only their own (the service checks it).
        requester = None if services.jobs.may_change(who, None) else who.user_id
        outcome = await services.generation.cancel(self.job_id, requester_id=requester)
        await interaction.response.send_message(
            "Cancelled." if outcome == "cancelled" else "Cancelling…", ephemeral=True
        )


BUTTONS = (
    RerollButton,
    FixFacesButton,
    EditButton,
    UpscaleButton,
    VaryButton,
    MakeThisHereButton,
    ParametersButton,
    DeleteButton,
    CancelButton,
    OtherCheckpointSelect,
)
