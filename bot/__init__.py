"""Easel's Discord-free services: checkpoints, generation, catalog, storage, configuration."""
