"""The GPU worker: the only place torch and diffusers are imported.

Submodules import torch; this package's __init__ and `protocol` do not, so the bot can share the
request/event dataclasses without paying for torch.
"""
