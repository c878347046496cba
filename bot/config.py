"""Settings from the environment (EASEL_*), a .env file and a TOML file, validated at start-up.

Precedence, highest first: environment, .env, the TOML file (EASEL_CONFIG, default ./easel.toml),
defaults. Every problem is reported as one line naming the setting.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from bot import outbound
from bot.generation.model_share import ShareOptions
from bot.images.inputs import InputStore
from bot.wildcards import WildcardLibrary, wildcard_folders
from common.errors import ConfigError
from common.protocol import is_broker_url
from common.worker_config import ENGINE

_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def _split(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EASEL_", env_file=".env", extra="ignore")

    discord_token: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("EASEL_DISCORD_TOKEN", "DISCORD_TOKEN", "discord_token")
    )
    owner_ids: Annotated[list[int], NoDecode] = Field(default_factory=list)
    models_dir: Path = Path("models")
    # Extra-network folders; unset: models/Lora (and LyCORIS), models/embeddings, and A1111's own
    # folders beside a models/Stable-diffusion models directory.
    lora_dirs: Annotated[list[Path], NoDecode] = Field(default_factory=list)
    embedding_dirs: Annotated[list[Path], NoDecode] = Field(default_factory=list)
    upscaler_dirs: Annotated[list[Path], NoDecode] = Field(default_factory=list)  # unset: models/ESRGAN …
    vae_dirs: Annotated[list[Path], NoDecode] = Field(default_factory=list)  # unset: models/VAE
    text_encoder_dirs: Annotated[list[Path], NoDecode] = Field(default_factory=list)  # unset: models/text_encoders, models/clip
    # Wildcard files (__name__ in a prompt); unset: models/wildcards, and A1111's Dynamic Prompts
    # extension's folder beside a models/Stable-diffusion models directory.
    wildcard_dirs: Annotated[list[Path], NoDecode] = Field(default_factory=list)
    data_dir: Path = Path("data")
    devices: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["auto"])  # "none": remote workers only
    # GPU workers on other machines (`python -m gpu_worker remote`) join through this Redis broker:
    # redis://[user:password@]host:port[/db], rediss:// for TLS. Unset: only the bot's own workers.
    broker: SecretStr | None = None
    # The keys frames to and from remote workers are signed with (common/frame_signing.py): a file of
    # `NAME KEY` lines, each worker started with `--key-file` holding its own line. Unset: unsigned
    # frames, for a broker only the bot and its workers can write to.
    worker_keys: Path | None = None
    # Remote workers started with --fetch-missing fetch the files they lack by hash (docs/remote-workers.md):
    # from the bot itself (share_models: an HTTP server on share_host:share_port; share_url: how workers
    # reach it, when not http://this-host:port) and/or from an S3-compatible bucket (share_s3_*:
    # files under PREFIX<sha256>, put there by `python bot.py share push`; boto3's credentials).
    share_models: bool = False
    share_host: str = "0.0.0.0"
    share_port: int = Field(default=8765, ge=0, le=65535)
    share_url: str = ""
    share_s3_bucket: str = ""
    share_s3_prefix: str = "easel/models/"
    share_s3_endpoint: str = ""
    share_s3_region: str = ""
    # Gateway shards (discord.py's AutoShardedBot in one process): "auto" takes Discord's
    # recommendation at login (one shard until the bot is in about a thousand servers; Discord
    # requires a new shard per 2,500), or a fixed count.
    shards: Literal["auto"] | Annotated[int, Field(ge=1, le=1024)] = "auto"
    # A Prometheus endpoint for operators (prometheus-client); unset: none.
    metrics_port: int | None = Field(default=None, ge=1, le=65535)
    metrics_host: str = "127.0.0.1"
    # Pipeline cache per worker: on the device (VRAM, or RAM for CPU workers) and, for GPU
    # workers, a second tier in CPU RAM. Unset: derived from the memory each has.
    cache_device_gb: float | None = Field(default=None, gt=0)
    cache_cpu_gb: float | None = Field(default=None, ge=0)
    # What the models compute in (A1111's --no-half): auto, full (float32), half (fp16) or bf16.
    precision: Literal["auto", "full", "half", "bf16"] = "auto"
    # The VAE's (A1111's --no-half-vae): auto (the model's, float32 where fp16 overflows) or full.
    vae_precision: Literal["auto", "full"] = "auto"
    # Where a picture's starting noise comes from, as A1111's "Random number generator source": GPU
    # (A1111's default; computed as CUDA draws it where there is no CUDA), CPU or NV.
    rng: Literal["GPU", "CPU", "NV"] = "GPU"
    # torch.compile of the denoiser's repeated blocks on CUDA (slower first picture per size, then faster).
    compile: bool = False
    # First-block cache on Flux (0 = off; 0.05-0.1 usual): faster, changes pictures (written in their infotext).
    cache_threshold: float = Field(default=0.0, ge=0, le=1)
    # Fairness limits for the bot's users (the CLI is not limited).
    max_queued_per_user: int = Field(default=3, ge=1)
    max_queue: int = Field(default=100, ge=1)
    cooldown_seconds: float = Field(default=5.0, ge=0)
    blocked_words: Annotated[list[str], NoDecode] = Field(default_factory=list)  # refused in prompts
    # Words added to the minors rule's lists (bot/rules/minors.py); its own cannot be removed.
    minor_terms: Annotated[list[str], NoDecode] = Field(default_factory=list)
    sexual_terms: Annotated[list[str], NoDecode] = Field(default_factory=list)
    nsfw_in_dms: bool = True  # NSFW-flagged checkpoints in DMs with the bot (servers decide for themselves)
    # Pictures the picture check scores as likely nudity: the bot's defaults, which servers may change.
    nsfw_pictures: Literal["withhold", "spoiler"] = "withhold"  # in ordinary channels
    nsfw_pictures_adult: Literal["allow", "spoiler", "withhold"] = "allow"  # age-restricted channels and DMs
    nsfw_threshold: float = Field(default=0.5, ge=0, le=1)
    preview_every: int = Field(default=5, ge=0, le=1000)  # steps between progress previews; 0: none
    # and at least this many seconds between them: Discord shows an edit of a message each 1.5 s at
    # most (cogs/utils/progress.py), so a preview taken sooner is decoded and checked for nothing.
    preview_seconds: float = Field(default=1.5, ge=0, le=600)
    # Catalog: semantic similarity needs the embedding process (torch + all-MiniLM-L6-v2, ~100 MB RAM).
    semantic_search: bool = True
    civitai_api_key: SecretStr | None = None  # only gated downloads need it; lookups by hash work without
    # The catalog asks Civitai live for checkpoints nobody here has installed (an owner's choice: off).
    catalog_live_search: bool = False
    download_max_gb: float = Field(default=20.0, gt=0)  # owners' downloads by URL or Civitai version
    inputs_max_gb: float = Field(default=2.0, gt=0)  # uploaded pictures kept for reruns, least recently used go
    # Hosts downloads may reach even on a private address (a model server on the owner's LAN).
    download_allow_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)

    @field_validator("download_allow_hosts", mode="before")
    @classmethod
    def _parse_allow_hosts(cls, value: object) -> object:
        split = _split(value)
        return [str(h).strip("[]").lower().rstrip(".") for h in split] if isinstance(split, list) else split

    @field_validator("lora_dirs", "embedding_dirs", "upscaler_dirs", "vae_dirs", "text_encoder_dirs", "wildcard_dirs", mode="before")
    @classmethod
    def _parse_folders(cls, value: object) -> object:
        return _split(value)

    @field_validator("lora_dirs", "embedding_dirs", "upscaler_dirs", "vae_dirs", "text_encoder_dirs", "wildcard_dirs")
    @classmethod
    def _folders_exist(cls, value: list[Path]) -> list[Path]:
        for folder in value:
            if not folder.expanduser().is_dir():
                raise ValueError(f"{folder} is not a folder")
        return [folder.expanduser().resolve() for folder in value]

    @field_validator("blocked_words", "minor_terms", "sexual_terms", mode="before")
    @classmethod
    def _parse_blocked_words(cls, value: object) -> object:
        return _split(value)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_path = Path(os.environ.get("EASEL_CONFIG", "easel.toml"))
        toml = TomlConfigSettingsSource(settings_cls, toml_file=toml_path)
        return init_settings, env_settings, dotenv_settings, toml

    @field_validator("owner_ids", mode="before")
    @classmethod
    def _parse_owner_ids(cls, value: object) -> object:
        return _split(value)

    @field_validator("devices", mode="before")
    @classmethod
    def _parse_devices(cls, value: object) -> object:
        return _split(value)

    @field_validator("devices")
    @classmethod
    def _check_devices(cls, value: list[str]) -> list[str]:
        if value == ["none"]:
            return []
        for device in value:
            if not _DEVICE.match(device):
                raise ValueError(f"{device!r} is not a device; use auto, cpu, mps, cuda or cuda:N (none: remote workers only)")
        if not value:
            raise ValueError("at least one device is needed (auto, cpu, mps, cuda:N), or none with EASEL_BROKER")
        return value

    @field_validator("broker")
    @classmethod
    def _check_broker(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value().strip():
            return None
        if not is_broker_url(value.get_secret_value()):
            raise ValueError("must be a redis://, rediss:// (TLS) or unix:// URL")
        return value

    @model_validator(mode="after")
    def _some_worker(self) -> Settings:
        if not self.devices and self.broker is None:
            raise ValueError("EASEL_DEVICES=none needs EASEL_BROKER: with neither, no worker could run a job")
        return self

    @field_validator("discord_token")
    @classmethod
    def _empty_token_is_none(cls, value: SecretStr | None) -> SecretStr | None:
        return value if value and value.get_secret_value().strip() else None

    def shard_count(self) -> int | None:
        """The shard count to start with; None: Discord's recommendation."""
        return None if self.shards == "auto" else int(self.shards)

    def worker_key_table(self) -> dict[str, tuple[bytes, ...]] | None:
        """EASEL_WORKER_KEYS read (ConfigError naming the line that is wrong), or None when unset."""
        from common.frame_signing import read_worker_keys

        return read_worker_keys(self.worker_keys) if self.worker_keys else None

    def share_options(self) -> ShareOptions:
        return ShareOptions(
            serve=self.share_models,
            host=self.share_host,
            port=self.share_port,
            public_url=self.share_url,
            s3_bucket=self.share_s3_bucket,
            s3_prefix=self.share_s3_prefix,
            s3_endpoint=self.share_s3_endpoint,
            s3_region=self.share_s3_region,
        )

    @property
    def broker_url(self) -> str | None:
        return self.broker.get_secret_value() if self.broker else None

    @property
    def civitai_key(self) -> str | None:
        return self.civitai_api_key.get_secret_value() if self.civitai_api_key else None

    def outbound_policy(self) -> outbound.Policy:
        return outbound.Policy(allowed_hosts=frozenset(self.download_allow_hosts))

    def input_store(self) -> InputStore:
        return InputStore(self.data_dir / "inputs", int(self.inputs_max_gb * 1e9))

    def engine(self) -> dict[str, object]:
        """The workers' engine options (common/worker_config.py ENGINE)."""
        return {name: getattr(self, name) for name in ENGINE}

    @property
    def database_path(self) -> Path:
        return self.data_dir / "easel.sqlite3"

    def wildcards(self) -> WildcardLibrary:
        """The wildcard folders (bot/wildcards.py); the models directory need not exist."""
        return WildcardLibrary(wildcard_folders(self.models_dir.expanduser().resolve(), self.wildcard_dirs))

    def models_root(self) -> Path:
        """The models directory, resolved; it must exist (an A1111 models/Stable-diffusion folder is fine)."""
        root = self.models_dir.expanduser()
        if not root.is_dir():
            raise ConfigError(
                f"models directory {root} does not exist; create it or set EASEL_MODELS_DIR (or models_dir in easel.toml)"
            )
        return root.resolve()


def load_settings(**overrides: object) -> Settings:
    """Build Settings, turning validation errors into one ConfigError naming each bad setting."""
    toml_path = Path(os.environ.get("EASEL_CONFIG", "easel.toml"))
    if "EASEL_CONFIG" in os.environ and not toml_path.is_file():
        raise ConfigError(f"EASEL_CONFIG points to {toml_path}, which does not exist")
    try:
        return Settings(**overrides)
    except ValidationError as e:
        problems = []
        for err in e.errors():
            where = ".".join(str(p) for p in err["loc"] if not isinstance(p, int)) or "settings"
            problems.append(f"{where}: {err['msg'].removeprefix('Value error, ')}")
        raise ConfigError("invalid configuration: " + "; ".join(problems)) from None
    except Exception as e:  # a malformed TOML file surfaces here
        raise ConfigError(f"cannot read the configuration: {e}") from None
