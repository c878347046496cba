"""What may be generated and posted where: NSFW checkpoints, blocked prompt words, and what happens
to a picture the picture check (gpu_worker/safety.py) scores as likely nudity."""

from __future__ import annotations

import math
import re

from bot.rules.limits import GenerationError


def check_nsfw(checkpoint_name: str, checkpoint_nsfw: bool, nsfw_allowed_here: bool) -> None:
    if checkpoint_nsfw and not nsfw_allowed_here:
        raise GenerationError(f"{checkpoint_name} is marked NSFW: use it in an age-restricted channel or in DMs")


def blocked_word(prompt: str, blocked: list[str]) -> str | None:
    """The first blocked word or phrase the prompt holds (whole words, any case)."""
    for phrase in blocked:
        if phrase.strip() and re.search(rf"(?<!\w){re.escape(phrase.strip())}(?!\w)", prompt, re.IGNORECASE):
            return phrase.strip()
    return None


def check_prompt(prompt: str, blocked: list[str]) -> None:
    """Refuse prompts holding a blocked word or phrase."""
    if blocked_word(prompt, blocked) is not None:
        raise GenerationError("your prompt contains a word this server does not allow; rephrase it")


# What a place does with a picture scored at or over its threshold: in an ordinary channel Discord
# allows no sexual content, so it is withheld or posted behind a spoiler; in an age-restricted
# channel or a DM it may also simply be posted.
PICTURE_ACTIONS = ("withhold", "spoiler")
ADULT_PICTURE_ACTIONS = ("allow", "spoiler", "withhold")


def readable_score(score: object) -> float | None:
    """A picture-check score as a number from 0 to 1; None when there is none (a worker that did not
    run the check) or it cannot be read (not a number, NaN, out of range)."""
    if isinstance(score, bool) or not isinstance(score, int | float):
        return None
    return float(score) if math.isfinite(score) and 0.0 <= score <= 1.0 else None


def picture_verdict(score: float | None, threshold: float, action: str, adult_action: str, adult: bool) -> str:
    """post | spoiler | withhold, for one picture's score in one place.

    Fails closed: a picture without a readable score counts as over the threshold, and where the
    place would only spoiler such a picture it is withheld instead (nobody looked at it)."""
    chosen = adult_action if adult else action
    checked = readable_score(score)
    if checked is None:
        return "post" if chosen == "allow" else "withhold"
    if checked < threshold:
        return "post"
    return "post" if chosen == "allow" else chosen


def checks_pictures(action: str, adult_action: str, adult: bool) -> bool:
    """Whether the picture check decides anything in this place (else every picture is posted)."""
    return (adult_action if adult else action) != "allow"
