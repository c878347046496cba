"""Owner-only commands: they touch the host's disk. Everyone else gets a private refusal."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.catalog.taxonomy import REALISM, SPECIALITIES, STYLES, TRAINING, facet_changes
from bot.checkpoints.merge_plan import METHODS
from bot.checkpoints.merging import BakeRequest, MergeRequest
from bot.checkpoints.registry import CheckpointEntry
from bot.model_files import add_model_file, scan_models
from bot.networks.registry import NetworkEntry
from cogs.catalog import info_embed
from cogs.loras import lora_embed
from cogs.utils.checkpoint_option import Registered
from cogs.utils.checks import owner_only
from cogs.utils.formatting import CONTENT_MAX, clip
from cogs.utils.lora_option import Lora
from cogs.utils.progress import ThrottledEdits
from cogs.utils.upscaler_option import PictureUpscaler
from cogs.utils.vae_option import Vae
from common.errors import RegistryError

if TYPE_CHECKING:
    from cogs.app import EaselBot


@app_commands.allowed_installs(guilds=True, users=True)
@app_commands.allowed_contexts(guilds=True, dms=True, private_channels=True)
class Admin(commands.GroupCog, group_name="admin", group_description="Bot owners: manage the checkpoints on disk"):
    def __init__(self, bot: EaselBot) -> None:
        self.bot = bot
        self.services = bot.services
        super().__init__()

    @owner_only()
    @app_commands.command(
        name="scan", description="Register new checkpoint files in the models folder, mark missing ones"
    )
    async def scan(self, interaction: discord.Interaction) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        report, others = await scan_models(self.services.registry, self.services.networks)
        lines = [
            f"{len(report.added)} added, {len(report.updated)} updated, {len(report.restored)} restored, "
            f"{len(report.missing)} missing, {report.unchanged} unchanged, {len(report.errors)} skipped"
        ]
        for registry, scanned in zip(self.services.networks, others, strict=True):
            lines.append(f"{registry.noun}s: {scanned.summary()}")
        lines += [f"+ {e.name} ({e.architecture})" for e in report.added]
        lines += [f"+ {e.name} ({e.label})" for scanned in others for e in scanned.added]
        lines += [f"skipped {path}: {reason}" for path, reason in report.errors]
        lines += [f"skipped {path}: {reason}" for scanned in others for path, reason in scanned.errors]
        await interaction.edit_original_response(content=clip("\n".join(lines), CONTENT_MAX))

    @owner_only()
    @app_commands.command(name="add", description="Register one checkpoint or LoRA file from the models folders")
    @app_commands.describe(
        path="Path inside the models folder (models/Lora: LoRAs, models/embeddings, models/ESRGAN: upscalers)",
        name="Name (default: the file's)",
        nsfw="Mark it NSFW",
    )
    async def add(
        self, interaction: discord.Interaction, path: str, name: str | None = None, nsfw: bool = False
    ) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        entry = await add_model_file(
            self.services.registry, self.services.networks, Path(path), name=name, nsfw=True if nsfw else None
        )
        embed = lora_embed(entry) if isinstance(entry, NetworkEntry) else info_embed(entry)
        await interaction.edit_original_response(content="Registered.", embed=embed)

    @owner_only()
    @app_commands.command(
        name="download", description="Download a checkpoint by URL or Civitai version, and register it"
    )
    @app_commands.describe(
        source="An https URL of a .safetensors file, or civitai:VERSION_ID",
        name="Name (default: the file's)",
        nsfw="Mark it NSFW",
    )
    async def download(
        self, interaction: discord.Interaction, source: str, name: str | None = None, nsfw: bool = False
    ) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        edits = ThrottledEdits(interaction)

        def progress(done: int, total: int | None) -> None:
            of = f" of {total / 1e9:.2f} GB ({100 * done / total:.0f} %)" if total else ""
            edits(f"Downloading… {done / 1e9:.2f} GB{of}")

        try:
            entry = await self.services.downloads.download(
                source, name=name, nsfw=True if nsfw else None, progress=progress
            )
        finally:
            await edits.settle()  # progress edits land before the answer, never after it
        embed = lora_embed(entry) if isinstance(entry, NetworkEntry) else info_embed(entry)
        await interaction.edit_original_response(content="Downloaded and registered.", embed=embed)

    @owner_only()
    @app_commands.command(name="remove", description="Forget a checkpoint, LoRA, embedding or upscaler (its file stays)")
    @app_commands.describe(
        checkpoint="A checkpoint", lora="Or a LoRA", embedding="Or an embedding", upscaler="Or an upscaler model"
    )
    async def remove(
        self,
        interaction: discord.Interaction,
        checkpoint: Registered | None = None,
        lora: Lora | None = None,
        embedding: str | None = None,
        upscaler: PictureUpscaler | None = None,
    ) -> None:
        named = [
            (registry, ref)
            for registry, ref in (
                (self.services.registry, checkpoint),
                (self.services.loras, lora),
                (self.services.embeddings, embedding),
                (self.services.upscalers, upscaler),
            )
            if ref
        ]
        if len(named) != 1:
            raise RegistryError("name one checkpoint, one LoRA, one embedding or one upscaler")
        [(registry, ref)] = named
        entry: CheckpointEntry | NetworkEntry = await registry.remove(ref)
        await interaction.response.send_message(
            f"Removed **{entry.name}** from the catalog; the file {entry.relative_path} is still on disk.",
            ephemeral=True,
        )

    @owner_only()
    @app_commands.command(name="merge", description="Merge checkpoints as A1111's Checkpoint Merger does")
    @app_commands.describe(
        primary="Model A",
        secondary="Model B (weighted sum, add difference)",
        tertiary="Model C (add difference: the model B was trained from)",
        method="(1-M)·A + M·B, A + M·(B-C), or a copy of A",
        multiplier="M, from 0 to 1",
        fp16="Save float weights as fp16",
        bake_vae="A VAE .safetensors file in the models folder to put in place of the model's own",
        prune="Drop EMA weights",
        name="Name of the new checkpoint",
    )
    @app_commands.choices(method=[app_commands.Choice(name=m.replace("_", " "), value=m) for m in METHODS])
    async def merge(
        self,
        interaction: discord.Interaction,
        primary: Registered,
        method: str,
        secondary: Registered | None = None,
        tertiary: Registered | None = None,
        multiplier: app_commands.Range[float, 0.0, 1.0] = 0.5,
        fp16: bool = False,
        bake_vae: str | None = None,
        prune: bool = False,
        name: str | None = None,
    ) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        edits = ThrottledEdits(interaction)
        request = MergeRequest(primary, method, multiplier, secondary, tertiary, bake_vae, fp16, prune, name)
        try:
            entry = await self.services.merges.merge(
                request, lambda done, total: edits(f"Merging… {done}/{total} tensors")
            )
        finally:
            await edits.settle()  # progress edits land before the result, never after it
        parents = ", ".join(f"{p['name']} ({p['autov2'].upper()})" for p in entry.lineage)
        await edits.show(f"Merged **{entry.name}** [{entry.autov2.upper()}] · {entry.architecture}\nParents: {parents}")

    @owner_only()
    @app_commands.command(name="bake", description="Write LoRAs into a copy of a checkpoint (merge LoRA to checkpoint)")
    @app_commands.describe(
        checkpoint="The checkpoint to start from",
        loras="As in a prompt: <lora:NAME:0.8> <lora:OTHER:0.5>",
        name="Name of the new checkpoint",
    )
    async def bake(
        self,
        interaction: discord.Interaction,
        checkpoint: Registered,
        loras: app_commands.Range[str, 1, 1000],
        name: str | None = None,
    ) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        edits = ThrottledEdits(interaction)
        try:
            entry = await self.services.merges.bake(
                BakeRequest(checkpoint, loras, name), lambda done, total: edits(f"Baking… {done}/{total} layers")
            )
        finally:
            await edits.settle()
        await edits.show(f"Baked **{entry.name}** [{entry.autov2.upper()}] · {entry.architecture}\n{entry.description}")

    @owner_only()
    @app_commands.command(name="edit", description="Change a checkpoint's name, description, tags, facets, VAE or NSFW flag")
    @app_commands.describe(
        checkpoint="The checkpoint to edit",
        name="New name",
        description="New description",
        tags="Comma-separated tags (replace the current ones)",
        nsfw="Only in age-restricted channels and DMs",
        styles=clip(f'Comma-separated: {", ".join(STYLES)} ("-" clears)', 100),
        realism=clip(f"Comma-separated: {', '.join(REALISM)}", 100),
        good_at=clip(f"Comma-separated: {', '.join(SPECIALITIES)}", 100),
        training="How it was made",
        trigger_words="Comma-separated words it was trained on",
        vae="Its default VAE (A1111's SD VAE); none: its own again",
    )
    @app_commands.choices(
        training=[app_commands.Choice(name=t, value=t) for t in TRAINING]
        + [app_commands.Choice(name="unknown (clear)", value="-")]
    )
    async def edit(
        self,
        interaction: discord.Interaction,
        checkpoint: Registered,
        name: str | None = None,
        description: app_commands.Range[str, 0, 2000] | None = None,
        tags: str | None = None,
        nsfw: bool | None = None,
        styles: str | None = None,
        realism: str | None = None,
        good_at: str | None = None,
        training: str | None = None,
        trigger_words: str | None = None,
        vae: Vae | None = None,
    ) -> None:
        def cleared(text: str | None) -> str | None:  # Discord has no empty option: "-" clears
            return "" if text is not None and text.strip() == "-" else text

        try:
            facets = facet_changes(
                styles=cleared(styles),
                realism=cleared(realism),
                specialities=cleared(good_at),
                training=cleared(training),
                trigger_words=cleared(trigger_words),
            )
            target = await self.services.registry.get(checkpoint)
            vae_sha256 = await self.services.vaes.default_sha256(vae, target.family) if vae is not None else None
            entry = await self.services.registry.edit(
                checkpoint,
                name=name,
                description=description,
                tags=tags.split(",") if tags is not None else None,
                nsfw=nsfw,
                facets=facets,
                vae_sha256=vae_sha256,
            )
        except ValueError as e:  # a facet outside the taxonomy: the owner's input, said as it is
            raise RegistryError(str(e)) from None
        await interaction.response.send_message("Saved.", embed=info_embed(entry), ephemeral=True)

    @owner_only()
    @app_commands.command(name="enrich", description="Look up the installed checkpoints on Civitai by hash")
    @app_commands.describe(refresh="Ask again even where a recent answer is cached")
    async def enrich(self, interaction: discord.Interaction, refresh: bool = False) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        report = await self.services.catalog.enrich(refresh=refresh)
        lines = [report.summary()]
        lines += [f"+ {name}" for name in report.found]
        await interaction.edit_original_response(content=clip("\n".join(lines), CONTENT_MAX))


async def setup(bot: EaselBot) -> None:
    await bot.add_cog(Admin(bot))
