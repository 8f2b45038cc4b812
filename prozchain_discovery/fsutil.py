"""Small file helpers shared by components (no state, no clock)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["atomic_write", "default_data_dir"]


def atomic_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so a reader sees the old or the new file, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def default_data_dir() -> Path:
    """Where a node keeps its key, peer book and status unless told: the XDG data dir."""
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(Path.home(), ".local", "share")
    return Path(base) / "prozchain-discovery"
