"""The GPU worker: the only place torch and diffusers are imported.

The bot never imports this package (it starts it as a process); what both sides speak is in common/.
"""

import logging


class _PilFallbackNotice(logging.Filter):
    """transformers says, once per image processor, that torchvision is missing and it uses PIL. That
    is by design here (PyPI's torchvision cannot load beside the pinned CPU torch), so the notice only
    alarms whoever reads the output."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "requires torchvision (not installed)" not in record.getMessage()


logging.getLogger("transformers.utils.import_utils").addFilter(_PilFallbackNotice())
