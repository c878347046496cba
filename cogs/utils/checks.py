"""Who may use a command, as decorators (discord.py's app_commands.check), each paired with the
default permissions that hide the command from those who may not.

A failed check raises CheckFailure with the reason; the tree's error handler (cogs/utils/errors.py)
answers it privately. The roles themselves are defined in bot/jobs.py (Asker).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import discord
from discord import app_commands

from cogs.utils.context import asker

T = TypeVar("T")

OWNERS_ONLY = "only the bot's owners can do this: it changes files on the bot's host"
MANAGERS_ONLY = "only members who can manage this server can do this"


def owner_only() -> Callable[[T], T]:
    def predicate(interaction: discord.Interaction) -> bool:
        if not asker(interaction).owner:
            raise app_commands.CheckFailure(OWNERS_ONLY)
        return True

    return app_commands.check(predicate)


def is_manager(message: str = MANAGERS_ONLY) -> Callable[[T], T]:
    """Manage Server in this server: the one moderator role. For a command inside a group, whose group
    carries `manager_group` below."""

    def predicate(interaction: discord.Interaction) -> bool:
        if not asker(interaction).manages_server:
            raise app_commands.CheckFailure(message)
        return True

    return app_commands.check(predicate)


def manages_server(message: str = MANAGERS_ONLY) -> Callable[[T], T]:
    """A top-level command for managers: the check, in servers only, hidden from other members."""

    def decorate(command: T) -> T:
        command = is_manager(message)(command)
        command = app_commands.guild_only()(command)
        return app_commands.default_permissions(manage_guild=True)(command)

    return decorate


def manager_group(cls: T) -> T:
    """A command group for managers (its commands each carry `is_manager`): servers only, hidden from others."""
    return app_commands.default_permissions(manage_guild=True)(app_commands.guild_only()(cls))
