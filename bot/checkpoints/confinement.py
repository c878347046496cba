"""One rule for every path the bot opens on someone's word: it must lie inside the models directory.

Checkpoints, sidecars (previews, .civitai.info, .yaml, .json), merge inputs and VAEs all pass
through here. A path is judged after every symbolic link in it is followed, so a link placed in
the models folder cannot lead a reader (or a member asking for `/checkpoints info`) elsewhere.
"""

from __future__ import annotations

from pathlib import Path

from common.errors import RegistryError


def inside(path: Path, root: Path) -> Path | None:
    """`path` fully resolved if it is a regular file inside `root`, else None. Never raises for I/O."""
    try:
        resolved = path.resolve()
        return resolved if resolved.is_relative_to(root.resolve()) and resolved.is_file() else None
    except (OSError, RuntimeError, ValueError):  # a link loop, a name with NUL, an unreadable folder
        return None


def resolve_inside(path: Path, root: Path, *, what: str = "file") -> Path:
    """`path` (absolute, relative to the current folder, or relative to `root`) resolved and confined.

    Raises RegistryError naming the rule that refused it.
    """
    try:
        candidate = path.expanduser()
        if not candidate.is_absolute() and not candidate.exists():
            candidate = root / candidate
        if not candidate.exists():
            raise RegistryError(f"{what} {path}: no such file (looked in the current folder and in {root})")
        resolved = candidate.resolve()
    except (OSError, RuntimeError, ValueError) as e:
        raise RegistryError(f"{what} {path}: cannot be read ({e})") from None
    if not resolved.is_relative_to(root.resolve()):
        raise RegistryError(f"{what} {path} is outside the models directory ({root}); move it there first")
    if not resolved.is_file():
        raise RegistryError(f"{what} {path} is not a regular file")
    return resolved
