"""Pieces the cogs share: replies and errors, formatting, checks, the checkpoint option, job messages."""
