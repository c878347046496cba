"""The GPU worker: the only place torch and diffusers are imported.

Submodules import torch; this package's __init__ and `protocol` do not, so the bot can share the
request/event dataclasses without paying for torch.
"""

import logging


class _PilFallbackNotice(logging.Filter):
    """transformers says, once per image processor, that torchvision is missing and it uses PIL. That
    is by design here (PyPI's torchvision cannot load beside the pinned CPU torch), so the notice only
    alarms whoever reads the output."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "requires torchvision (not installed)" not in record.getMessage()


logging.getLogger("transformers.utils.import_utils").addFilter(_PilFallbackNotice())
