"""How the bot answers when something is refused or fails: one short private line, never silence.

Every entry point routes its errors here: the command tree's `on_error` (slash commands and
autocomplete), `answers_errors` on persistent buttons and selects (discord.py only logs what a
DynamicItem callback raises, leaving the user on "thinking…"), and the `on_error` of our views
and modals. Users see the message of an EaselError, or one line saying it failed on our side;
operators get the traceback in the log.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import discord
from discord import app_commands

from cogs.utils.formatting import CONTENT_MAX, clip
from common.errors import EaselError

log = logging.getLogger(__name__)

OUR_FAULT = "something went wrong on our side; the bot's owner can find the details in the log"
T = TypeVar("T")


async def refuse(
    interaction: discord.Interaction, message: str, *, placeholder: str = "⚠️ could not start this job"
) -> None:
    """A short private answer; a public 'thinking…' placeholder is replaced by `placeholder`, then removed."""
    text = f"⚠️ {clip(message, CONTENT_MAX - 3)}"
    if interaction.response.is_done():
        # After a deferral the first follow-up would *replace* the public placeholder, so complete
        # the placeholder first, answer privately, then remove the placeholder.
        await interaction.edit_original_response(content=placeholder, embed=None, attachments=[], view=None)
        await interaction.followup.send(text, ephemeral=True)
        try:
            await interaction.delete_original_response()
        except discord.HTTPException:
            pass
    else:
        await interaction.response.send_message(text, ephemeral=True)


async def report_error(interaction: discord.Interaction, error: BaseException, *, where: str) -> None:
    """Answer the person whose action raised `error`; log the traceback unless it is an EaselError."""
    if isinstance(error, app_commands.CommandInvokeError | app_commands.TransformerError):
        error = error.__cause__ or error
    if isinstance(error, EaselError | app_commands.CheckFailure):
        message = str(error) or "you cannot use this here"
    else:
        log.error("%s failed for user %s", where, interaction.user.id, exc_info=error)
        message = OUR_FAULT
    if interaction.type is discord.InteractionType.autocomplete:
        return  # an autocomplete cannot carry a message; the user sees no suggestions
    try:
        await refuse(interaction, message, placeholder="⚠️ that did not work")
    except discord.HTTPException as e:  # the interaction expired, or Discord is down: the log must do
        log.warning("could not tell user %s that %s failed: %s", interaction.user.id, where, e)


def answers_errors(
    callback: Callable[..., Awaitable[T]],
) -> Callable[..., Awaitable[T | None]]:
    """For a button's or select's `callback(self, interaction)`: errors are answered, not just logged."""

    @functools.wraps(callback)
    async def wrapper(self: Any, interaction: discord.Interaction, *args: Any) -> T | None:
        try:
            return await callback(self, interaction, *args)
        except Exception as error:
            await report_error(interaction, error, where=type(self).__name__)
            return None

    return wrapper


class AnsweringView(discord.ui.View):
    async def on_error(self, interaction: discord.Interaction, error: Exception, item: discord.ui.Item[Any]) -> None:
        await report_error(interaction, error, where=f"{type(self).__name__} ({type(item).__name__})")


class AnsweringModal(discord.ui.Modal):
    async def on_error(self, interaction: discord.Interaction, error: Exception) -> None:
        await report_error(interaction, error, where=type(self).__name__)
