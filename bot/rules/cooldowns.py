"""Per-user cooldown between requests, with the time left in the refusal."""

from __future__ import annotations

import time
from collections.abc import Callable

from bot.rules.limits import GenerationError


class Cooldowns:
    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds = seconds
        self._clock = clock
        self._last: dict[str, float] = {}

    def check(self, user: str) -> None:
        """Raise GenerationError saying when to retry if `user` asked too recently."""
        if self.seconds <= 0 or user not in self._last:
            return
        left = self._last[user] + self.seconds - self._clock()
        if left > 0:
            raise GenerationError(f"slow down a little: you can ask again in {max(1, round(left))} s")

    def record(self, user: str) -> None:
        self._last[user] = self._clock()
        if len(self._last) > 10_000:  # forget users whose cooldown is long over
            horizon = self._clock() - self.seconds
            self._last = {u: t for u, t in self._last.items() if t > horizon}
