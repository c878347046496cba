"""discord.py cogs: Discord in and out (options, checks, embeds, views). No business logic here."""
