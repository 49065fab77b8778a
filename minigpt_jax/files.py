"""Files written so that a crash leaves the old version or the new one, never half of one.

Shards, manifests, tokenizers, exported weights and evaluation records all go through here: written
under a temporary name, flushed to disk, then renamed over the target in one step.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """`write(tmp)` fills a temporary file, which then replaces `path`."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # a full disk, a read-only target, Ctrl-C: no `<path>.tmp` left behind
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def write_json_atomic(path: str | os.PathLike, obj: Any, indent: int = 1) -> None:
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=indent) + "\n"))


def copy_atomic(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    atomic_write(dst, lambda tmp: shutil.copyfile(src, tmp))


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file, read in 4 MB blocks (shards are hundreds of MB)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def read_jsonl(
    path: str | os.PathLike, error: Callable[[str], Exception]
) -> Iterator[tuple[str, Any]]:
    """(`path:line`, parsed value) for each non-blank line of a JSON Lines file.

    The one JSONL reader of the package's own files (SFT pairs, HellaSwag rows, test problems,
    metrics): a line that is not UTF-8 or not JSON raises `error(message)` naming `path:line`.
    """
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise error(
                    f"{where}: not UTF-8 text (byte {e.start} of the line is "
                    f"0x{raw[e.start]:02x}); convert the file to UTF-8"
                ) from None
            if not line.strip():
                continue
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as e:
                raise error(f"{where}: not a JSON line ({e.msg})") from None
