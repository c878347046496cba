"""`python bot.py workers`: every GPU worker — the bot's own devices, and each remote worker on the
broker as its latest heartbeat says (machine, device, memory, loaded checkpoints, what it runs)."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from bot.config import Settings
from bot.generation.remote import BrokerUnavailable, list_workers
from bot.generation.worker_status import describe, from_heartbeat
from common.errors import EaselError


async def cmd_workers(args: argparse.Namespace, settings: Settings) -> int:
    url = args.broker or settings.broker_url
    local = [f"{device} (starts with the bot; /status shows it live)" for device in settings.devices]
    remote = []
    if url:
        try:
            beats = await list_workers(url)
        except BrokerUnavailable as e:
            raise EaselError(str(e)) from None
        remote = [from_heartbeat(beat, slot) for slot, beat in enumerate(beats)]
    if args.json:
        print(json.dumps({"local": settings.devices, "remote": [asdict(w) for w in remote]}, indent=2))
        return 0
    print("The bot's own workers: " + (", ".join(local) or "none (EASEL_DEVICES=none)"))
    if not url:
        print("No broker (EASEL_BROKER or --broker): no remote workers.")
        return 0
    if not remote:
        print("No remote worker has a heartbeat on the broker.")
    for worker in remote:
        title, body = describe(worker)
        print(f"\n{title}\n" + "\n".join(f"  {line}" for line in body.splitlines()))
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("workers", help="list GPU workers: this machine's devices and remote workers on the broker")
    p.add_argument("--broker", default=None, help="redis://… (default: EASEL_BROKER)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_workers)
