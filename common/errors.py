"""Errors that carry a message meant for the person who caused them."""


class EaselError(Exception):
    """A failure whose message is safe and useful to show to a user as is (one line, no traceback)."""


class CheckpointFileError(EaselError):
    """A checkpoint file is unreadable, malformed or unsafe; nothing was executed or written."""


class RegistryError(EaselError):
    """A registry operation was refused (duplicate, outside the models directory, unknown name)."""


class ConfigError(EaselError):
    """The configuration is invalid; the message names the setting and what is expected."""
