#!/usr/bin/env python3
"""Figures of the code's shape, for the redesign's notes: import edges between our packages,
functions over 80 lines, and the files that name one /imagine option.

    python tools/architecture_figures.py [--option cfg_rescale] [--json OUT]
"""

from __future__ import annotations

import argparse
import ast
import collections
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("common", "gpu_worker", "bot", "cogs", "cli")
LONG = 80


def _sources() -> list[Path]:
    return [ROOT / "bot.py", *sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))]


def _layer(path: Path) -> str:
    return path.relative_to(ROOT).parts[0]  # a package, or bot.py itself


def figures(option: str) -> dict:
    edges: collections.Counter[str] = collections.Counter()
    long: list[tuple[int, str]] = []
    for path in _sources():
        layer = _layer(path)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            modules = []
            if isinstance(node, ast.Import):
                modules = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules = [node.module]
            for module in modules:
                top = module.split(".")[0]
                if top in PACKAGES and top != layer:
                    edges[f"{layer} -> {top}"] += 1
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > LONG:
                    long.append((lines, f"{path.relative_to(ROOT)}:{node.name}"))
    touched = sorted(
        str(p.relative_to(ROOT))
        for p in [*_sources(), *sorted((ROOT / "migrations").glob("*.sql"))]
        if option in p.read_text()
    )
    return {
        "import_edges": dict(sorted(edges.items())),
        "functions_over_80_lines": [f"{name} ({lines})" for lines, name in sorted(long, reverse=True)],
        "option": option,
        "files_naming_option": touched,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--option", default="cfg_rescale")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = figures(args.option)
    print("import edges between packages:")
    for edge, count in result["import_edges"].items():
        print(f"  {edge}: {count}")
    print(f"functions over {LONG} lines: {len(result['functions_over_80_lines'])}")
    for name in result["functions_over_80_lines"]:
        print(f"  {name}")
    print(f"files naming {args.option}: {len(result['files_naming_option'])}")
    for name in result["files_naming_option"]:
        print(f"  {name}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
