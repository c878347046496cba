"""`python bot.py share push`: every registered model file into the object store remote workers fetch
from (EASEL_SHARE_S3_BUCKET; bot/generation/model_share.py), under PREFIX<sha256>; files the bucket
holds already are left as they are."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from bot.config import Settings
from bot.db import open_database
from bot.generation.model_share import ObjectStore, file_size
from bot.model_files import file_registries
from cli.checkpoints import open_registry
from cli.output import human_size
from common.errors import EaselError


async def cmd_share_push(args: argparse.Namespace, settings: Settings) -> int:
    if not settings.share_s3_bucket:
        raise EaselError("no object store: set EASEL_SHARE_S3_BUCKET (and EASEL_SHARE_S3_ENDPOINT for one that is not AWS)")
    files: dict[str, tuple[str, str]] = {}  # sha256 -> (name, path)
    async with open_registry(settings) as checkpoints:
        for entry in await checkpoints.list():
            files.setdefault(entry.sha256, (entry.name, str(entry.path)))
    db = await open_database(settings.database_path)
    try:
        for registry in file_registries(db, settings):
            for network in await registry.list():
                files.setdefault(network.sha256, (network.name, str(network.path)))
    finally:
        await db.close()
    # Here, not at the top: boto3 costs every other command of `python bot.py` a tenth of a second.
    from boto3.exceptions import Boto3Error
    from botocore.exceptions import BotoCoreError, ClientError

    store = ObjectStore(settings.share_s3_bucket, settings.share_s3_prefix, settings.share_s3_endpoint, settings.share_s3_region)
    pushed = kept = skipped = 0
    for sha256, (name, path) in sorted(files.items(), key=lambda item: item[1][0]):
        size = file_size(path)
        if not sha256 or size < 0:
            print(f"skipped {name}: not a single file this machine can read")
            skipped += 1
            continue
        if args.dry_run:
            print(f"would push {name} ({human_size(size)}) as {store.key(sha256)}")
            continue
        try:
            uploaded = await asyncio.to_thread(store.push, Path(path), sha256)
        except (BotoCoreError, ClientError, Boto3Error) as e:  # no credentials, no bucket, refused, unreachable
            raise EaselError(f"the object store did not take {name}: {e}") from None
        if uploaded:
            print(f"pushed {name} ({human_size(size)}) as {store.key(sha256)}")
            pushed += 1
        else:
            kept += 1
    print(f"{pushed} pushed, {kept} already in s3://{settings.share_s3_bucket}/{settings.share_s3_prefix}, {skipped} skipped")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("share", help="the object store remote workers fetch model files from")
    actions = p.add_subparsers(dest="share_command", required=True)
    push = actions.add_parser("push", help="upload every registered model file the bucket lacks, by sha256")
    push.add_argument("--dry-run", action="store_true", help="say what would be uploaded, upload nothing")
    push.set_defaults(handler=cmd_share_push)
