#!/usr/bin/env python3
"""Easel's entry point. `python bot.py` runs the bot; `python bot.py --help` lists the CLI commands."""

import sys

from cli import main

if __name__ == "__main__":
    sys.exit(main())
