"""Write bot/catalog/figures.json: Civitai's public figures (downloads, thumbs up, publication date)
for every entry of the bundled reference list, dated, for the catalog's currency prior offline.

Run on a machine with network before a release; it asks Civitai once per entry (about 70 requests)
and keeps only exact name matches. A failure (no network, HTTP 429) stops it and leaves the old file.

python tools/snapshot_catalog_figures.py [--out PATH] [--api-key KEY]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bot.catalog.civitai import CivitaiClient
from bot.catalog.figures import FIGURES_FILE, take_snapshot, write_snapshot
from bot.catalog.sources import reference_entries


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=FIGURES_FILE)
    parser.add_argument("--api-key", default=None)
    args = parser.parse_args()
    client = CivitaiClient(args.api_key)
    try:
        snapshot = await take_snapshot(client, list(reference_entries()))
    finally:
        await client.close()
    if snapshot.error:
        print(f"stopped: {snapshot.error}; {args.out} left as it was", file=sys.stderr)
        return 1
    write_snapshot(snapshot, args.out)
    print(f"wrote {args.out}: figures for {len(snapshot.figures)} entries as of {snapshot.as_of}; not on Civitai "
          f"under their name: {', '.join(snapshot.missing) or 'none'}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
