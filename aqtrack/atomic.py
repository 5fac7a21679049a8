"""Writing a file so that a crash, or a reader at any moment, sees the old file or the whole new one."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def write_atomically(path: Path, write: Callable[[BinaryIO], object]) -> Path:
    """Call `write` on a temporary file next to `path`, fsync it, rename it over `path` (POSIX rename is
    atomic within a file system). The temporary file is removed whatever happens. Returns `path`."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text_atomically(path: Path, text: str) -> Path:
    return write_atomically(path, lambda f: f.write(text.encode()))


def copy_atomically(source: Path, dest: Path) -> None:
    """`source`'s bytes as `dest`, all at once: hard-linked (no second copy) where the file system can,
    else copied, then renamed over `dest`."""
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    try:
        try:
            os.link(source, tmp)
        except OSError:  # file systems without hard links
            shutil.copyfile(source, tmp)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
