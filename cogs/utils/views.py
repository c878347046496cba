"""Views that belong to the person who opened them (a pager, a picker): only they may use them, errors
are answered, and when the view times out its components are disabled so nothing looks clickable."""

from __future__ import annotations

from typing import Any

import discord

from cogs.utils.errors import AnsweringView, refuse

NOT_YOURS = "this belongs to whoever opened it; run the command yourself"


class OwnedView(AnsweringView):
    def __init__(self, owner_id: int, *, timeout: float | None = 600) -> None:
        super().__init__(timeout=timeout)
        self.owner_id = owner_id
        self.message: discord.Message | discord.InteractionMessage | None = None

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        if interaction.user.id == self.owner_id:
            return True
        await refuse(interaction, NOT_YOURS)
        return False

    async def on_timeout(self) -> None:
        for item in self.children:
            if isinstance(item, discord.ui.Button | discord.ui.Select):
                item.disabled = True
        if self.message is not None:
            try:
                await self.message.edit(view=self)
            except discord.HTTPException:
                pass  # the message is gone, or the token expired: nothing left to disable

    async def send(self, interaction: discord.Interaction, **kwargs: Any) -> None:
        """Answer the interaction with this view, remembering the message so a timeout can disable it."""
        await interaction.response.send_message(view=self, **kwargs)
        self.message = await interaction.original_response()
