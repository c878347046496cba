"""What may be generated where: NSFW checkpoints and blocked prompt words."""

from __future__ import annotations

import re

from bot.generation.requests import GenerationError


def check_nsfw(checkpoint_name: str, checkpoint_nsfw: bool, nsfw_allowed_here: bool) -> None:
    if checkpoint_nsfw and not nsfw_allowed_here:
        raise GenerationError(f"{checkpoint_name} is marked NSFW: use it in an age-restricted channel or in DMs")


def check_prompt(prompt: str, blocked: list[str]) -> None:
    """Refuse prompts holding a blocked word or phrase (whole words, any case)."""
    for phrase in blocked:
        if phrase.strip() and re.search(rf"(?<!\w){re.escape(phrase.strip())}(?!\w)", prompt, re.IGNORECASE):
            raise GenerationError("your prompt contains a word this server does not allow; rephrase it")
