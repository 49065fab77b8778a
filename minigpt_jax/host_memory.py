"""Host memory on a CPU run: why a step spends a fifth of its time in the kernel, and the fix.

XLA's CPU runtime allocates each step's large temporaries (activations, attention scores,
gradients) through glibc's malloc, which maps buffers this large fresh from the kernel and unmaps
them on free. Every step then page-faults the same few hundred megabytes back in, 4 KiB at a
time: measured on the arithmetic configs, about 85,000 faults a second and a quarter of the
process's CPU time in the kernel. glibc 2.35+ can back its memory with transparent huge pages
(`GLIBC_TUNABLES=glibc.malloc.hugetlb=1`), which cuts the faults about 50-fold and the CPU time
per step by a tenth to a fifth, with bit-identical results (BENCHMARKS.md, "Huge pages for
malloc on a CPU").

glibc reads the tunable once, when the process starts, so the trainer cannot switch it on for
itself; it says so instead, once, when the switch would help.
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Mapping
from pathlib import Path

HUGEPAGES_KEY = "glibc.malloc.hugetlb"
HUGEPAGES_TUNABLE = f"{HUGEPAGES_KEY}=1"
THP_MODE_FILE = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def _glibc_at_least(version: str, minimum: tuple[int, int]) -> bool:
    try:
        major, minor = (int(part) for part in version.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= minimum


def hugepage_hint(
    backend: str,
    environ: Mapping[str, str] = os.environ,
    thp_mode_file: Path = THP_MODE_FILE,
    libc: tuple[str, str] | None = None,
) -> str | None:
    """One line telling a CPU run to restart with huge-page malloc, or None when it would not help:
    another backend, not Linux, glibc older than 2.35, the kernel's huge pages off (`never`) or
    already on for every mapping (`always`), or the tunable already set."""
    if backend != "cpu" or not sys.platform.startswith("linux"):
        return None
    if HUGEPAGES_KEY in environ.get("GLIBC_TUNABLES", ""):
        return None
    name, version = libc if libc is not None else platform.libc_ver()
    if name != "glibc" or not _glibc_at_least(version, (2, 35)):
        return None
    try:
        mode = thp_mode_file.read_text()
    except OSError:
        return None
    if "[madvise]" not in mode:
        return None
    return (
        f"tip: a CPU run on glibc: start with GLIBC_TUNABLES={HUGEPAGES_TUNABLE} for a tenth to "
        "a fifth less CPU time per step, the same results (fewer page faults; docs/training.md)"
    )
