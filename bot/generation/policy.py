"""What may be generated and posted where: NSFW checkpoints, blocked prompt words, and what happens
to a picture the picture check (gpu_worker/safety.py) scores as likely nudity."""

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


# What a place does with a picture scored at or over its threshold: in an ordinary channel Discord
# allows no sexual content, so it is withheld or posted behind a spoiler; in an age-restricted
# channel or a DM it may also simply be posted.
PICTURE_ACTIONS = ("withhold", "spoiler")
ADULT_PICTURE_ACTIONS = ("allow", "spoiler", "withhold")


def picture_verdict(score: float, threshold: float, action: str, adult_action: str, adult: bool) -> str:
    """post | spoiler | withhold, for one picture's score in one place."""
    if score < threshold:
        return "post"
    chosen = adult_action if adult else action
    return "post" if chosen == "allow" else chosen
