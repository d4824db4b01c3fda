"""Files written whole: a crash, a kill or a reader in another process sees the old content or the new, never
half of either (the text is written to a temporary file beside the target, then renamed over it)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

from msfusion_ray.errors import writing


def write_atomic(path: Path, write: Callable[[Path], object]) -> None:
    """Have `write(temporary_path)` write the file, then rename it over `path` (same directory: one rename). A
    write that fails (a full disk, a read-only one, a quota) raises `WriteFailed` naming `path`, its temporary
    file removed."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with writing(path, partial=(temporary,)):
        path.parent.mkdir(parents=True, exist_ok=True)
        write(temporary)
        os.replace(temporary, path)


def write_text_atomic(path: Path, text: str) -> None:
    """Replace a text file whole."""
    write_atomic(path, lambda temporary: temporary.write_text(text, encoding="utf-8"))
