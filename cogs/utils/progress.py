"""Progress shown by editing one message, at most every EDIT_INTERVAL seconds."""

from __future__ import annotations

import asyncio
import time

import discord

from cogs.utils.formatting import CONTENT_MAX, clip

EDIT_INTERVAL = 1.5  # seconds between edits of one message (Discord rate-limits faster edits)


class Throttle:
    """Says whether an edit may go out now: at most one per EDIT_INTERVAL, unless forced."""

    def __init__(self, interval: float = EDIT_INTERVAL) -> None:
        self.interval = interval
        self._last = float("-inf")

    def ready(self, *, force: bool = False) -> bool:
        now = time.monotonic()
        if not force and now - self._last < self.interval:
            return False
        self._last = now
        return True


class ThrottledEdits:
    """Call with a line of progress from anywhere on the loop; `settle()` before the final answer,
    so a late progress edit never lands on top of it."""

    def __init__(self, interaction: discord.Interaction) -> None:
        self.interaction = interaction
        self._throttle = Throttle()
        self._edits: list[asyncio.Task[None]] = []

    def __call__(self, text: str) -> None:
        if self._throttle.ready():
            self._edits.append(asyncio.get_running_loop().create_task(self.show(text)))

    async def show(self, text: str) -> None:
        await self.interaction.edit_original_response(content=clip(text, CONTENT_MAX))

    async def settle(self) -> None:
        await asyncio.gather(*self._edits)
