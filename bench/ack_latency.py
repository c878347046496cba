"""Acknowledgement latency of /imagine (interaction in -> deferral sent) with the worker saturated:
100 /imagine from 100 users, each left in flight (queued or running) while the next arrives.
Target: p99 ≤ 50 ms. Also reports the same figure with an idle worker, measured in the same run.

python bench/ack_latency.py [N]   (default 100; writes bench/results/ack_latency-DATE.json)
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import discord
import simcord

from bench.harness import percentile, report, tiny_checkpoint
from bot.config import Settings
from bot.services import open_services
from cogs.app import create_bot


def instrument() -> tuple[dict[int, float], dict[int, float]]:
    """Record when each interaction reached the bot and when its deferral had been sent."""
    arrived: dict[int, float] = {}
    deferred: dict[int, float] = {}
    original_defer = discord.InteractionResponse.defer

    async def timed_defer(self, *args, **kwargs):
        result = await original_defer(self, *args, **kwargs)
        deferred[self._parent.id] = time.perf_counter()
        return result

    original_parse = discord.state.ConnectionState.parse_interaction_create

    def timed_parse(self, data):  # the moment the gateway event reaches discord.py
        arrived.setdefault(int(data["id"]), time.perf_counter())
        return original_parse(self, data)

    discord.InteractionResponse.defer = timed_defer  # type: ignore[method-assign]
    discord.state.ConnectionState.parse_interaction_create = timed_parse  # type: ignore[method-assign]
    return arrived, deferred


async def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "models").mkdir()
        shutil.copy(tiny_checkpoint(root), root / "models" / "tiny.safetensors")
        settings = Settings(
            models_dir=root / "models", data_dir=root / "data", devices=["cpu"], cooldown_seconds=0, max_queue=n + 10
        )
        services = await open_services(settings, preview_every=1)
        await services.registry.scan()
        arrived, deferred = instrument()
        bot = create_bot(services, always_sync=True)
        env = simcord.Env(bot, settle_timeout=120)
        bot.external_wait = env.external_wait  # each command returns once its job is queued
        await env.start()
        try:
            with env.time_context():
                guild = env.create_guild()
                channel = guild.create_text_channel("bench")
                users = [guild.add_member(env.create_user(f"user{i}")) for i in range(n + 1)]
                await users[0].slash(channel, "imagine", prompt="warm-up", checkpoint="tiny", steps=2)
                idle = set(arrived)
                for i in range(1, 6):  # idle baseline: one at a time, each finishing first
                    await users[i].slash(channel, "imagine", prompt=f"idle {i}", checkpoint="tiny", steps=2)
                    while services.generation.status().running or services.generation.status().queued:  # noqa: ASYNC110
                        await asyncio.sleep(0.05)
                idle_ids = set(arrived) - idle
                before = set(arrived)
                for i in range(n):  # saturated: every job stays in flight while the next arrives
                    user = users[1 + (i % n)]
                    await user.slash(channel, "imagine", prompt=f"busy {i}", checkpoint="tiny", steps=20)
                busy_ids = set(arrived) - before
                status = services.generation.status()
        finally:
            await env.shutdown()
            await services.close()

    def latencies(ids: set[int]) -> list[float]:
        return [deferred[i] - arrived[i] for i in ids if i in deferred]

    idle_ms = [x * 1000 for x in latencies(idle_ids)]
    busy_ms = [x * 1000 for x in latencies(busy_ids)]
    report(
        "ack_latency",
        {
            "interactions_saturated": len(busy_ms),
            "in_flight_at_end": status.queued + status.running,
            "idle_p50_ms": round(percentile(idle_ms, 50), 3),
            "saturated_p50_ms": round(percentile(busy_ms, 50), 3),
            "saturated_p99_ms": round(percentile(busy_ms, 99), 3),
            "saturated_max_ms": round(max(busy_ms), 3),
        },
    )


if __name__ == "__main__":
    asyncio.run(main())
