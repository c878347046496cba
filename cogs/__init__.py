"""discord.py cogs: Discord in and out (options, checks, embeds, views). No business logic here."""

from __future__ import annotations

import logging

import discord


class _ProbeNotice(logging.Filter):
    """simcord (the playground) probes discord.py with a client of no intents, which then warns that
    the guilds intent is off; Easel's own client has it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Guilds intent seems to be disabled" not in record.getMessage()


logging.getLogger("discord.state").addFilter(_ProbeNotice())
# Easel never joins voice: the warnings that voice libraries are missing say nothing to an operator.
discord.VoiceClient.warn_nacl = False
discord.VoiceClient.warn_dave = False
