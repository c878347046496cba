"""Upscaler models (ESRGAN family, as A1111 users keep them): what a file is, their registry, the names the hires fix and the upscale command take."""
