"""/checkpoints search, compare, list and info, and "Use this": find the right checkpoint and start a picture.

The answers come from the catalog service (bot/catalog/); this cog only turns them into embeds and
components. NSFW-flagged checkpoints are shown only in age-restricted channels and DMs.
"""

from __future__ import annotations

import asyncio
import io
from pathlib import Path
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.catalog.compare import finish_compare
from bot.catalog.live import civitai_line
from bot.catalog.query import REFINEMENTS, refined
from bot.catalog.service import Answer
from bot.checkpoints.registry import CheckpointEntry
from bot.checkpoints.sidecars import read_preview
from bot.components.parts import parts_of_entry
from bot.generation.checkpoint_ref import CheckpointRef
from bot.jobs import ImagineOptions
from cogs.utils.attachments import fit_image
from cogs.utils.checkpoint_option import Offered, checkpoint_choices
from cogs.utils.context import asker, place
from cogs.utils.errors import AnsweringModal, answers_errors, refuse
from cogs.utils.formatting import EMBED_COLOUR, FIELD_MAX, clip
from cogs.utils.job_messages import post_result, run_plan, services_of, tell_withheld
from cogs.utils.model_previews import send_card
from cogs.utils.views import OwnedView
from common.families import FAMILIES

if TYPE_CHECKING:
    from cogs.app import EaselBot

PAGE = 10
FAMILY_CHOICES = {family.label: name for name, family in FAMILIES.items()}


PREVIEW_MAX_BYTES = 4 << 20


def info_embed(entry: CheckpointEntry, parts: list[str] | None = None) -> discord.Embed:
    embed = discord.Embed(
        title=clip(entry.name, 256), colour=EMBED_COLOUR, description=clip(entry.description, 4096) or None
    )
    embed.add_field(name="Architecture", value=entry.architecture)
    embed.add_field(name="AutoV2", value=entry.autov2.upper())
    embed.add_field(name="Format", value=f"{entry.format} · {entry.file_size / 1e9:.2f} GB")
    quantised = entry.inspection.get("quantisation")
    if quantised:  # GGUF's blocks or ComfyUI's scaled fp8: what memory it takes depends on it
        embed.add_field(name="Quantisation", value=clip(str(quantised), FIELD_MAX), inline=False)
    if entry.vae_sha256:
        embed.add_field(name="VAE", value=f"its default: {entry.vae_sha256[:10]} (a file in models/VAE)")
    if entry.training:
        embed.add_field(name="Training", value=entry.training)
    if entry.tags:
        embed.add_field(name="Tags", value=clip(", ".join(entry.tags), FIELD_MAX))
    words = (entry.sidecars.get("civitai") or {}).get("trained_words") or []
    if words:
        embed.add_field(name="Trigger words", value=clip(", ".join(words), FIELD_MAX))
    if entry.lineage:
        parents = "\n".join(f"{p['role']}: {p['name'] or '?'} ({p['autov2'].upper()})" for p in entry.lineage)
        embed.add_field(name="Merged from", value=clip(parents, FIELD_MAX), inline=False)
    if parts:  # a transformer-only file: the text encoders and VAE it runs with, or what it lacks
        embed.add_field(name="Needs", value=clip("\n".join(parts), FIELD_MAX), inline=False)
    if not entry.runnable:
        embed.add_field(
            name="Cannot be run", value=clip(entry.inspection.get("architecture_info", {}).get("reason", ""), FIELD_MAX)
        )
    embed.set_footer(text=f"{entry.status} · {'NSFW' if entry.nsfw else 'SFW'}")
    return embed


class Catalog(commands.GroupCog, group_name="checkpoints", group_description="The checkpoints this bot has"):
    def __init__(self, bot: EaselBot) -> None:
        self.bot = bot
        self.registry = bot.services.registry
        super().__init__()

    async def cog_load(self) -> None:
        self.bot.add_dynamic_items(UseButton, UsePick, CompareButton, RefineButton)

    @app_commands.command(name="search", description="Which checkpoint for…? Ask in words")
    @app_commands.describe(question="e.g. which checkpoint for anime? · realistic portraits for sdxl · no nsfw")
    @app_commands.allowed_installs(guilds=True, users=True)
    @app_commands.allowed_contexts(guilds=True, dms=True, private_channels=True)
    async def search(self, interaction: discord.Interaction, question: app_commands.Range[str, 1, 300]) -> None:
        await interaction.response.defer(thinking=True)
        await show_answer(interaction, await ask(interaction, question))

    @app_commands.command(name="compare", description="The same prompt and seed on several checkpoints, in one grid")
    @app_commands.describe(
        prompt="What to draw", first="A checkpoint", second="Another", third="(optional)", fourth="(optional)"
    )
    @app_commands.allowed_installs(guilds=True, users=True)
    @app_commands.allowed_contexts(guilds=True, dms=True, private_channels=True)
    async def compare(
        self,
        interaction: discord.Interaction,
        prompt: app_commands.Range[str, 1, 1500],
        first: Offered,
        second: Offered,
        third: Offered | None = None,
        fourth: Offered | None = None,
        seed: app_commands.Range[int, -1, 2**32 - 1] = -1,
    ) -> None:
        await run_compare_for(interaction, prompt, [n for n in (first, second, third, fourth) if n], seed)

    async def visible(self, interaction: discord.Interaction, family: str | None = None) -> list[CheckpointEntry]:
        return await self.bot.services.jobs.shown(place(interaction), family=family)

    @app_commands.command(name="list", description="The checkpoints installed here")
    @app_commands.describe(base="Only this base model")
    @app_commands.choices(base=[app_commands.Choice(name=k, value=v) for k, v in FAMILY_CHOICES.items()])
    @app_commands.allowed_installs(guilds=True, users=True)
    @app_commands.allowed_contexts(guilds=True, dms=True, private_channels=True)
    async def list_(self, interaction: discord.Interaction, base: str | None = None) -> None:
        entries = await self.visible(interaction, base)
        if not entries:
            await refuse(interaction, "no checkpoint matches" if base else "no checkpoint is installed yet")
            return
        view = CatalogPages(entries, interaction.user.id)
        await view.send(interaction, embed=view.embed())

    @app_commands.command(name="info", description="Everything known about one checkpoint")
    @app_commands.allowed_installs(guilds=True, users=True)
    @app_commands.allowed_contexts(guilds=True, dms=True, private_channels=True)
    async def info(self, interaction: discord.Interaction, name: str) -> None:
        entry = await self.registry.find(name)
        if entry is None or entry not in await self.visible(interaction):
            await refuse(interaction, f"no checkpoint named {name!r} here; /checkpoints list shows them")
            return
        view = (
            discord.ui.View(timeout=None).add_item(UseButton(entry.name)) if entry.runnable else discord.utils.MISSING
        )
        ref = CheckpointRef.from_entry(entry)
        services = self.bot.services
        parts = await parts_of_entry(ref.needs, ref.family, ref.vae_sha256, services.text_encoders, services.vaes)
        preview = await asyncio.to_thread(
            read_preview, entry.preview_path, self.registry.models_root, PREVIEW_MAX_BYTES
        )
        suffix = Path(entry.preview_path or "").suffix.lower()
        await send_card(interaction, services.jobs, info_embed(entry, parts.lines()), preview, suffix, view=view)

    @info.autocomplete("name")
    async def names(self, interaction: discord.Interaction, current: str) -> list[app_commands.Choice[str]]:
        return checkpoint_choices(await self.visible(interaction), current)


class CatalogPages(OwnedView):
    """Pages of ten, and a picker that opens one checkpoint's card; only for whoever listed them."""

    def __init__(self, entries: list[CheckpointEntry], owner: int) -> None:
        super().__init__(owner, timeout=600)
        self.entries = entries
        self.page = 0
        self.refresh()

    @property
    def pages(self) -> int:
        return (len(self.entries) + PAGE - 1) // PAGE

    def shown(self) -> list[CheckpointEntry]:
        return self.entries[self.page * PAGE : (self.page + 1) * PAGE]

    def embed(self) -> discord.Embed:
        lines = [
            f"**{e.name}** · {e.architecture} · `{e.autov2.upper()}`" + (" · not runnable" if not e.runnable else "")
            for e in self.shown()
        ]
        embed = discord.Embed(title="Checkpoints", description="\n".join(lines), colour=EMBED_COLOUR)
        embed.set_footer(text=f"page {self.page + 1} of {self.pages} · {len(self.entries)} in all")
        return embed

    def refresh(self) -> None:
        self.previous.disabled = self.page == 0
        self.next.disabled = self.page >= self.pages - 1
        self.pick.options = [
            discord.SelectOption(label=clip(e.name, 100), description=clip(e.architecture, 100), value=e.name[:100])
            for e in self.shown()
        ]

    async def turn(self, interaction: discord.Interaction, step: int) -> None:
        self.page = max(0, min(self.pages - 1, self.page + step))
        self.refresh()
        await interaction.response.edit_message(embed=self.embed(), view=self)

    @discord.ui.button(label="Previous", style=discord.ButtonStyle.secondary)
    async def previous(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        await self.turn(interaction, -1)

    @discord.ui.button(label="Next", style=discord.ButtonStyle.secondary)
    async def next(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        await self.turn(interaction, +1)

    @discord.ui.select(placeholder="Open a checkpoint…", options=[discord.SelectOption(label="-")])
    async def pick(self, interaction: discord.Interaction, select: discord.ui.Select) -> None:
        entry = next(e for e in self.entries if e.name == select.values[0])
        view = (
            discord.ui.View(timeout=None).add_item(UseButton(entry.name)) if entry.runnable else discord.utils.MISSING
        )
        await interaction.response.send_message(embed=info_embed(entry), view=view, ephemeral=True)


class UseButton(discord.ui.DynamicItem[discord.ui.Button], template=r"easel:use:(?P<name>[a-z0-9._-]{1,80})"):
    """Start a picture with this checkpoint: asks for the prompt, then runs like /imagine."""

    def __init__(self, name: str) -> None:
        super().__init__(
            discord.ui.Button(
                label="Use this", emoji="🎨", style=discord.ButtonStyle.primary, custom_id=f"easel:use:{name}"
            )
        )
        self.name = name

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Button, match) -> UseButton:
        return cls(match["name"])

    @answers_errors
    async def callback(self, interaction: discord.Interaction) -> None:
        await interaction.response.send_modal(PromptModal(self.name))


class PromptModal(AnsweringModal, title="Imagine"):
    prompt = discord.ui.TextInput(
        label="Prompt", style=discord.TextStyle.paragraph, max_length=1500, custom_id="prompt"
    )
    negative = discord.ui.TextInput(label="Negative prompt", required=False, max_length=1000, custom_id="negative")

    def __init__(self, checkpoint: str) -> None:
        super().__init__(timeout=None)
        self.checkpoint = checkpoint

    async def on_submit(self, interaction: discord.Interaction) -> None:
        await interaction.response.defer(thinking=True)
        # Left empty, the negative prompt is the one set for this place.
        given = {"negative": str(self.negative) or None}
        options = ImagineOptions(prompt=str(self.prompt), given=given, checkpoint=self.checkpoint)
        jobs = services_of(interaction).jobs
        await run_plan(interaction, await jobs.plan_imagine(asker(interaction), place(interaction), options))


def answer_embed(answer: Answer) -> discord.Embed:
    lines = []
    for i, hit in enumerate(answer.hits, 1):
        e = hit.entry
        title = f"{'✅' if e.installed else '📚'} **{i}. {e.display_name}**" + (f" `{e.name}`" if e.installed else "")
        lines.append(f"{title}\n↳ {hit.why}\n↳ try: {hit.try_}")
    embed = discord.Embed(
        title=clip(ANSWER_TITLE + answer.question, 256),
        description=clip("\n\n".join(lines), 4096),
        colour=EMBED_COLOUR,
    )
    if answer.loras:
        embed.add_field(
            name=clip(f"LoRAs for {answer.loras[0].entry.base_label} that fit", 256),
            value=clip(
                "\n".join(f"`<lora:{h.entry.name}:1>` · {', '.join(h.matched)}" for h in answer.loras), FIELD_MAX
            ),
            inline=False,
        )
    if answer.civitai:
        embed.add_field(
            name="Also on Civitai (not installed here)",
            value=clip("\n".join(civitai_line(m) for m in answer.civitai), FIELD_MAX),
            inline=False,
        )
    footer = f"Read as: {answer.understood}" if answer.understood else "Read as free text"
    footer += "".join(f" · {note}" for note in answer.notes)
    embed.set_footer(text=clip(footer, 2048))
    return embed


ANSWER_TITLE = "Which checkpoint: "


async def ask(interaction: discord.Interaction, question: str) -> Answer:
    """The catalog's answer under this place's rules (NSFW, hidden checkpoints)."""
    bot: EaselBot = interaction.client  # type: ignore[assignment]
    where = place(interaction)
    here = await bot.services.jobs.rules(where)
    return await bot.services.catalog.search(
        question, allow_nsfw=here.allow_nsfw(where.adult), limit=5, hidden=here.hidden
    )


async def show_answer(interaction: discord.Interaction, answer: Answer) -> None:
    if answer.help:
        await refuse(interaction, answer.help)
        return
    await interaction.edit_original_response(embed=answer_embed(answer), view=answer_view(answer))


def answer_view(answer: Answer) -> discord.ui.View:
    """Use one (installed answers), compare them, or ask again with a constraint added."""
    view = discord.ui.View(timeout=None)
    runnable = [h.entry for h in answer.hits if h.entry.installed and h.entry.runnable]
    if runnable:
        view.add_item(UsePick([e.name for e in runnable]))
    if len(runnable) >= 2:
        view.add_item(CompareButton(fit_names([e.name for e in runnable][:COMPARE_BUTTON_MAX])))
    for key in REFINEMENTS:
        view.add_item(RefineButton(key))
    return view


class RefineButton(discord.ui.DynamicItem[discord.ui.Button], template=r"easel:refine:(?P<key>[a-z]+)"):
    """Ask the answer's question again with a constraint added ("More realistic", "SDXL only"): the
    question is read back from the answer's title, so the button works on any answer, however old."""

    def __init__(self, key: str) -> None:
        label = REFINEMENTS[key][0] if key in REFINEMENTS else key
        super().__init__(
            discord.ui.Button(label=label, style=discord.ButtonStyle.secondary, custom_id=f"easel:refine:{key}")
        )
        self.key = key

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Button, match) -> RefineButton:
        return cls(match["key"])

    @answers_errors
    async def callback(self, interaction: discord.Interaction) -> None:
        embeds = interaction.message.embeds if interaction.message else []
        title = embeds[0].title or "" if embeds else ""
        if self.key not in REFINEMENTS or not title.startswith(ANSWER_TITLE):
            await refuse(interaction, "this answer can no longer be refined; ask again with /checkpoints search")
            return
        await interaction.response.defer(thinking=True)
        question = refined(title.removeprefix(ANSWER_TITLE).rstrip("…"), REFINEMENTS[self.key][1])
        await show_answer(interaction, await ask(interaction, question))


COMPARE_BUTTON_MAX = 4  # names that fit the Compare-these button's custom id; bot/jobs.py sets the rule
COMPARE_PREFIX = "easel:cmp:"


def fit_names(names: list[str]) -> list[str]:
    """As many names as fit in a custom id (100 characters), at least two or none."""
    kept: list[str] = []
    for name in names:
        if len(COMPARE_PREFIX) + len(",".join([*kept, name])) > 100:
            break
        kept.append(name)
    return kept if len(kept) >= 2 else []


class UsePick(discord.ui.DynamicItem[discord.ui.Select], template=r"easel:usepick"):
    """Pick one of the installed answers and start a picture with it."""

    def __init__(self, names: list[str]) -> None:
        options = [discord.SelectOption(label=clip(n, 100), value=n[:100]) for n in names[:25]] or [
            discord.SelectOption(label="-")
        ]
        super().__init__(discord.ui.Select(placeholder="Use one of these…", options=options, custom_id="easel:usepick"))

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Select, match) -> UsePick:
        return cls([o.value for o in item.options])

    @answers_errors
    async def callback(self, interaction: discord.Interaction) -> None:
        await interaction.response.send_modal(PromptModal(self.item.values[0]))


class CompareButton(
    discord.ui.DynamicItem[discord.ui.Button], template=r"easel:cmp:(?P<names>[a-z0-9._-]+(?:,[a-z0-9._-]+)+)"
):
    """Compare the installed answers: asks for a prompt, then renders one grid."""

    def __init__(self, names: list[str]) -> None:
        super().__init__(
            discord.ui.Button(
                label="Compare these",
                emoji="🔬",
                style=discord.ButtonStyle.secondary,
                custom_id=COMPARE_PREFIX + ",".join(names),
                disabled=len(names) < 2,
            )
        )
        self.names = names

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction, item: discord.ui.Button, match) -> CompareButton:
        return cls(match["names"].split(","))

    @answers_errors
    async def callback(self, interaction: discord.Interaction) -> None:
        await interaction.response.send_modal(ComparePromptModal(self.names))


class ComparePromptModal(AnsweringModal, title="Compare checkpoints"):
    prompt = discord.ui.TextInput(
        label="Prompt", style=discord.TextStyle.paragraph, max_length=1500, custom_id="prompt"
    )

    def __init__(self, names: list[str]) -> None:
        super().__init__(timeout=None)
        self.names = names

    async def on_submit(self, interaction: discord.Interaction) -> None:
        await run_compare_for(interaction, str(self.prompt), self.names, -1)


async def run_compare_for(interaction: discord.Interaction, prompt: str, names: list[str], seed: int) -> None:
    """Defer, plan under the rules of this place, render the grid through the generation queue, post it."""
    bot: EaselBot = interaction.client  # type: ignore[assignment]
    services = bot.services
    await interaction.response.defer(thinking=True)
    plan = await services.jobs.plan_compare(asker(interaction), place(interaction), prompt, names, seed)
    handles = await services.jobs.start(plan)
    names_shown = ", ".join(f"**{ref.name}**" for ref in plan.checkpoints)
    await interaction.edit_original_response(content=f"Comparing {names_shown}: {len(handles)} pictures in the queue…")
    result = await bot.wait_external(
        finish_compare(services.generation, handles, prompt, plan.seed), reason="comparison in the generation queue"
    )
    names_line = " · ".join(f"{name} `{autov2.upper()}`" for name, autov2 in result.tiles)
    embed = discord.Embed(title="Same prompt, same seed", description=clip(prompt, 4096), colour=EMBED_COLOUR)
    embed.add_field(name="Checkpoints", value=clip(names_line, FIELD_MAX), inline=False)
    embed.add_field(name="Seed", value=str(result.seed))
    embed.set_footer(text=clip("jobs " + ", ".join(result.job_ids), 2048))
    verdict = plan.verdict(result.nsfw_score)  # the picture check, as for any result (bot/jobs.py)
    for job_id, score in zip(result.job_ids, result.scores, strict=True):
        await services.generation.store.set_safety(job_id, [score], [verdict])
    if verdict == "withhold":
        await tell_withheld(interaction, ",".join(result.job_ids), 1, 1, unchecked=result.nsfw_score is None)
        return
    data, extension = await asyncio.to_thread(fit_image, result.png, interaction.filesize_limit or 10 * 1024 * 1024)
    spoiler = plan.spoiler or verdict == "spoiler"
    files = [discord.File(io.BytesIO(data), filename=f"compare.{extension}", spoiler=spoiler)]
    if spoiler:
        embed.description = clip(f"{prompt}\n\nThis server shows pictures behind a spoiler: click to see.", 4096)
    else:
        embed.set_image(url=f"attachment://compare.{extension}")
    await post_result(interaction, embed=embed, files=files, what="comparison " + ",".join(result.job_ids))


async def setup(bot: EaselBot) -> None:
    await bot.add_cog(Catalog(bot))
