"""Progress shown by editing one private message, at most every EDIT_INTERVAL seconds."""

from __future__ import annotations

import asyncio
import time

import discord

from cogs.formatting import CONTENT_MAX, clip

EDIT_INTERVAL = 1.5  # seconds between edits of one message (Discord rate-limits faster edits)


class ThrottledEdits:
    """Call with a line of progress from anywhere on the loop; `settle()` before the final answer,
    so a late progress edit never lands on top of it."""

    def __init__(self, interaction: discord.Interaction) -> None:
        self.interaction = interaction
        self._last = 0.0
        self._edits: list[asyncio.Task[None]] = []

    def __call__(self, text: str) -> None:
        now = time.monotonic()
        if now - self._last >= EDIT_INTERVAL:
            self._last = now
            self._edits.append(asyncio.get_running_loop().create_task(self.show(text)))

    async def show(self, text: str) -> None:
        await self.interaction.edit_original_response(content=clip(text, CONTENT_MAX))

    async def settle(self) -> None:
        await asyncio.gather(*self._edits)
