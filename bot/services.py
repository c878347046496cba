"""Every service the bot and the CLI share, opened and closed together."""

from __future__ import annotations

from dataclasses import dataclass

import aiosqlite

from bot.catalog.embeddings import EmbeddingProcess
from bot.catalog.service import CatalogService
from bot.checkpoints.download import Downloader
from bot.checkpoints.merging import MergeService
from bot.checkpoints.registry import CheckpointRegistry
from bot.components.registry import VaeRegistry, vae_registry
from bot.components.text_encoders import TextEncoderRegistry, text_encoder_registry
from bot.config import Settings
from bot.controlnets.annotators import AnnotatorRegistry, annotator_registry
from bot.controlnets.clip_vision import ClipVisionRegistry, clip_vision_registry
from bot.controlnets.registry import ControlNetRegistry, controlnet_registry
from bot.db import open_database
from bot.detectors import DetectorRegistry, detector_registry
from bot.generation.service import GenerationService
from bot.generation.workers import worker_configs
from bot.guilds.settings import GuildSettings
from bot.images.picture_check import PictureCheck
from bot.jobs import Jobs
from bot.networks.registry import EmbeddingRegistry, LoraRegistry, NetworkRegistry, network_registries
from bot.rules.limits import Limits
from bot.styles import StyleBook
from bot.upscalers.registry import UpscalerRegistry, upscaler_registry
from bot.upscalers.service import UpscaleService


@dataclass
class Services:
    settings: Settings
    db: aiosqlite.Connection
    registry: CheckpointRegistry
    generation: GenerationService
    merges: MergeService
    catalog: CatalogService
    downloads: Downloader
    guild_settings: GuildSettings
    jobs: Jobs  # every job is started here, whatever the front end
    loras: LoraRegistry
    embeddings: EmbeddingRegistry
    upscalers: UpscalerRegistry
    upscaling: UpscaleService
    vaes: VaeRegistry
    text_encoders: TextEncoderRegistry
    controlnets: ControlNetRegistry
    clip_vision: ClipVisionRegistry
    annotators: AnnotatorRegistry
    detectors: DetectorRegistry

    @property
    def networks(self) -> list[NetworkRegistry]:
        """The registries of files beside checkpoints (LoRAs, embeddings, upscalers, VAEs, text
        encoders, ControlNets), for the commands that take any model file."""
        return [
            self.loras, self.embeddings, self.upscalers, self.vaes, self.text_encoders, self.controlnets, self.clip_vision,
            self.annotators, self.detectors,
        ]  # fmt: skip

    async def close(self) -> None:
        await self.generation.close()
        self.generation.metrics.close()
        await self.catalog.close()
        await self.db.close()


def limits_from(settings: Settings) -> Limits:
    return Limits(
        max_queued_per_user=settings.max_queued_per_user,
        max_queue=settings.max_queue,
        cooldown_seconds=settings.cooldown_seconds,
    )


async def open_services(
    settings: Settings, *, limits: Limits | None = None, preview_every: int | None = None
) -> Services:
    """Open the database, the registry and the merge service, and start one worker per device."""
    db = await open_database(settings.database_path)
    generation: GenerationService | None = None
    try:
        registry = CheckpointRegistry(db, settings.models_root())
        generation = GenerationService(
            db,
            worker_configs(
                settings.devices,
                settings.cache_device_gb,
                settings.cache_cpu_gb,
                **settings.engine(),
            ),
            limits or limits_from(settings),
            preview_every=settings.preview_every if preview_every is None else preview_every,
            preview_seconds=settings.preview_seconds,
            broker_url=settings.broker_url,
            worker_keys=settings.worker_key_table(),
            share=settings.share_options(),
        )
        if settings.metrics_port:
            generation.metrics.serve(settings.metrics_host, settings.metrics_port)
        # The bot's own workers are waited for; remote ones join when they come (jobs wait for them).
        await generation.start(wait=bool(settings.devices))
    except BaseException:
        if generation is not None:
            generation.metrics.close()
        await db.close()
        raise
    loras, embeddings = network_registries(db, settings)
    catalog = CatalogService(
        db,
        registry,
        EmbeddingProcess(cache_dir=settings.data_dir / "cache") if settings.semantic_search else None,
        civitai_api_key=settings.civitai_key,
        live_search=settings.catalog_live_search,
        loras=loras,
    )
    upscalers = upscaler_registry(db, settings)
    vaes = vae_registry(db, settings)
    text_encoders = text_encoder_registry(db, settings)
    controlnets = controlnet_registry(db, settings)
    clip_vision = clip_vision_registry(db, settings)
    annotators = annotator_registry(db, settings)
    detectors = detector_registry(db, settings)
    networks = [loras, embeddings, upscalers, vaes, text_encoders, controlnets, clip_vision, annotators, detectors]
    downloads = Downloader.from_settings(registry, settings, networks)
    guild_settings = GuildSettings(
        db,
        registry,
        settings.blocked_words,
        generation.limits,
        nsfw_in_dms=settings.nsfw_in_dms,
        pictures=(settings.nsfw_pictures, settings.nsfw_pictures_adult, settings.nsfw_threshold),
        rng=settings.rng,
    )
    upscaling = UpscaleService(upscalers)
    jobs = Jobs(
        registry,
        generation,
        guild_settings,
        loras,
        embeddings,
        settings.input_store(),
        upscaling,
        vaes,
        extra_terms=(settings.minor_terms, settings.sexual_terms),
        text_encoders=text_encoders,
        picture_check=PictureCheck(),
        styles=StyleBook(db),
        wildcards=settings.wildcards(),
        controlnets=controlnets,
        clip_vision=clip_vision,
        annotators=annotators,
        detectors=detectors,
    )
    return Services(
        settings,
        db,
        registry,
        generation,
        MergeService(registry, loras),
        catalog,
        downloads,
        guild_settings,
        jobs,
        loras,
        embeddings,
        upscalers,
        upscaling,
        vaes,
        text_encoders,
        controlnets,
        clip_vision,
        annotators,
        detectors,
    )
