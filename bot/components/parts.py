"""The parts a checkpoint file lacks (a transformer-only Flux file: CLIP-L, T5-XXL, its VAE), found
in the component store: one lookup for jobs (bot/jobs.py) and for what `checkpoints show` and
/checkpoints info say is found and missing."""

from __future__ import annotations

from dataclasses import dataclass

from bot.checkpoints.architecture import NEEDS_FILES, NEEDS_FILES_BY_WIDTH, NEEDS_FILES_OF, NEEDS_FOLDERS, needs_label
from bot.components.registry import VaeRegistry
from bot.components.text_encoders import TextEncoderRegistry, component_use
from common.errors import EaselError
from common.protocol import ComponentUse, VaeUse


@dataclass(frozen=True)
class PartsFound:
    found: tuple[ComponentUse, ...]
    missing: tuple[str, ...]  # roles: clip_l | clip_g | t5xxl | vae
    family: str = "flux"
    widths: tuple[tuple[str, int], ...] = ()  # what the checkpoint needs, (role, width)

    def _advice(self, role: str) -> str:
        files = NEEDS_FILES_OF.get(self.family, NEEDS_FILES)
        name = NEEDS_FILES_BY_WIDTH.get((role, dict(self.widths).get(role, 0)), files[role])
        return f"put {name} in {NEEDS_FOLDERS[role]}"

    def refusal(self, name: str) -> EaselError:
        """One line for everything missing: what, the file people have for it, and where it goes."""
        parts = [f"a {needs_label(role, self.family)} ({self._advice(role)})" for role in self.missing]
        return EaselError(f"{name} needs {' and '.join(parts)}; then rescan")

    def lines(self) -> list[str]:
        """Per part: the file that will be used, or what to put where."""
        out = [f"{needs_label(use.role, self.family)}: {use.name}" for use in self.found]
        out += [f"{needs_label(role, self.family)}: missing ({self._advice(role)})" for role in self.missing]
        return out


async def parts_of_entry(
    needs: tuple[tuple[str, int], ...],
    family: str,
    vae_sha256: str | None,
    text_encoders: TextEncoderRegistry | None,
    vaes: VaeRegistry | None,
) -> PartsFound:
    """What a registered checkpoint would run with now (its default VAE if one is set and fits)."""
    vae = None
    if vae_sha256 and vaes is not None:
        try:
            vae, _ = await vaes.choose(None, vae_sha256, family)
        except EaselError:
            vae = None
    return await find_parts(needs, family, text_encoders, vaes, vae)


async def find_parts(
    needs: tuple[tuple[str, int], ...],
    family: str,
    text_encoders: TextEncoderRegistry | None,
    vaes: VaeRegistry | None,
    vae: VaeUse | None = None,
) -> PartsFound:
    """Each needed part: the text encoder of that role and width (the first by name), and for the VAE
    the one chosen (`vae`: the job's or the checkpoint's default) else the first installed that fits."""
    found: list[ComponentUse] = []
    missing: list[str] = []
    for role, width in needs:
        use: ComponentUse | None = None
        if role == "vae":
            vae = vae or (await vaes.first_fitting(family) if vaes is not None else None)
            use = ComponentUse("vae", vae.name, vae.path, vae.sha256) if vae is not None else None
        elif text_encoders is not None:
            entry = await text_encoders.fitting(role, width)
            use = component_use(role, entry) if entry is not None else None
        if use is None:
            missing.append(role)
        else:
            found.append(use)
    return PartsFound(tuple(found), tuple(missing), family, tuple(needs))
