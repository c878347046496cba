"""Configuration from environment, .env and TOML, with one clear line per problem."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.config import load_settings
from common.errors import ConfigError


def test_defaults(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EASEL_MODELS_DIR")
    monkeypatch.delenv("EASEL_DATA_DIR")
    s = load_settings()
    assert s.discord_token is None and s.owner_ids == [] and s.devices == ["auto"]
    assert s.models_dir == Path("models") and s.database_path == Path("data/easel.sqlite3")


def test_environment_lists(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EASEL_OWNER_IDS", "123, 456")
    monkeypatch.setenv("EASEL_DEVICES", "cuda:0,cuda:1")
    monkeypatch.setenv("DISCORD_TOKEN", "abc")
    s = load_settings()
    assert s.owner_ids == [123, 456] and s.devices == ["cuda:0", "cuda:1"]
    assert s.discord_token is not None and s.discord_token.get_secret_value() == "abc"


def test_toml_and_dotenv_with_environment_first(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (env / "easel.toml").write_text(
        'owner_ids = [7]\ndevices = ["cpu"]\nmodels_dir = "/srv/sd/models/Stable-diffusion"\n'
    )
    (env / ".env").write_text("EASEL_DEVICES=mps\n")
    monkeypatch.delenv("EASEL_MODELS_DIR")
    s = load_settings()
    assert s.owner_ids == [7]
    assert s.devices == ["mps"]  # .env beats the TOML file
    assert s.models_dir == Path("/srv/sd/models/Stable-diffusion")
    monkeypatch.setenv("EASEL_DEVICES", "cpu")
    assert load_settings().devices == ["cpu"]  # the environment beats .env


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("EASEL_DEVICES", "gpu9", "devices: 'gpu9' is not a device"),
        ("EASEL_OWNER_IDS", "me", "owner_ids"),
    ],
)
def test_invalid_values_name_the_setting(
    env: Path, monkeypatch: pytest.MonkeyPatch, key: str, value: str, message: str
) -> None:
    monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError, match=message):
        load_settings()


def test_missing_config_file_and_bad_toml(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EASEL_CONFIG", str(env / "nope.toml"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings()
    (env / "bad.toml").write_text("owner_ids = [")
    monkeypatch.setenv("EASEL_CONFIG", str(env / "bad.toml"))
    with pytest.raises(ConfigError, match="cannot read the configuration"):
        load_settings()


def test_models_dir_must_exist(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EASEL_MODELS_DIR", str(env / "absent"))
    with pytest.raises(ConfigError, match=r"models directory .* does not exist"):
        load_settings().models_root()


def test_a1111_models_folder_just_works(env: Path, cli, add_tiny, monkeypatch: pytest.MonkeyPatch) -> None:
    a1111 = env / "stable-diffusion-webui" / "models" / "Stable-diffusion"
    a1111.mkdir(parents=True)
    (a1111 / "Put Stable Diffusion checkpoints here.txt").write_text("")
    monkeypatch.setenv("EASEL_MODELS_DIR", str(a1111))
    target = add_tiny("sd1")
    target.rename(a1111 / "tiny.safetensors")
    (a1111 / "tiny.vae.pt").write_bytes(b"not scanned: A1111 keeps VAEs beside checkpoints")
    result = cli("checkpoints", "scan")
    assert result.code == 0, result.err
    assert "1 added" in result.out and "0 skipped" in result.out
