"""The machine's peak FLOP/s: the one denominator of every MFU that the trainer or a bench prints.

Accelerators take the vendor's dense figure (a sheet, not a measurement: what the chip is sold as).
A CPU has no sheet (cores, vector width and clock vary), so its peak is measured: the best of a few
large jitted matmuls, through the same XLA that compiles the model. The best, not the median, of
sizes 2048 and up: a peak is what the hardware can do, and a 1024² matmul, or one repetition that
a neighbour's process interrupted, reads low and makes every MFU look better than it is.

The measurement takes a few seconds, so it is cached per machine in a small JSON file
(`$MINIGPT_JAX_CACHE` or `~/.cache/minigpt_jax/peak_flops.json`), keyed by everything that changes
it: device kind, CPU model, usable cores, JAX version, XLA_FLAGS and dtype. `refresh=True` measures
again (do it on an idle machine before publishing benchmarks).
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp

from minigpt_jax.files import write_json_atomic

# Dense peak FLOP/s per device from vendor sheets (bf16 for the bf16 column; TF32 for float32).
# Longer names first: "H100" must not match an "H10" entry, nor "TPU v5" a "TPU v5 lite".
VENDOR_PEAK_FLOPS = {
    "H200": {"bfloat16": 989e12, "float32": 494e12},
    "H100": {"bfloat16": 989e12, "float32": 494e12},
    "A100": {"bfloat16": 312e12, "float32": 156e12},
    "L4": {"bfloat16": 121e12, "float32": 60e12},
    "A10": {"bfloat16": 125e12, "float32": 62.5e12},
    "TPU v5 lite": {"bfloat16": 197e12, "float32": 197e12},
    "TPU v5": {"bfloat16": 459e12, "float32": 459e12},
    "TPU v4": {"bfloat16": 275e12, "float32": 275e12},
}
MATMUL_SIZES = (2048, 3072)
CACHE_ENV = "MINIGPT_JAX_CACHE"


def vendor_peak_flops(device_kind: str, dtype: str = "float32") -> float | None:
    """The sheet figure for a device kind (as `jax.Device.device_kind` spells it), else None."""
    for name in sorted(VENDOR_PEAK_FLOPS, key=len, reverse=True):
        if name.lower() in device_kind.lower():
            return VENDOR_PEAK_FLOPS[name][dtype]
    return None


def measure_matmul_peak(
    dtype: str = "float32", sizes: tuple[int, ...] = MATMUL_SIZES, repeats: int = 5
) -> float:
    """Best FLOP/s over `repeats` timings of an n x n jitted matmul, for each n in `sizes`."""
    best = 0.0
    matmul = jax.jit(lambda x, y: x @ y)
    for n in sizes:
        a = jnp.ones((n, n), dtype)
        b = jnp.full((n, n), 0.5, dtype)
        matmul(a, b).block_until_ready()  # compile and touch the memory
        for _ in range(repeats):
            t0 = time.perf_counter()
            matmul(a, b).block_until_ready()
            best = max(best, 2 * n**3 / (time.perf_counter() - t0))
    return best


def machine_key(device_kind: str, dtype: str) -> str:
    """What a measured peak depends on: the chip, the cores this process may use, the compiler."""
    cpu = _cpu_model()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    flags = os.environ.get("XLA_FLAGS", "")  # e.g. another matmul library
    return f"{device_kind}|{cpu}|{cores} cores|jax {jax.__version__}|{dtype}|{flags}"


def cache_path() -> Path:
    root = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "minigpt_jax"
    return Path(root) / "peak_flops.json"


def device_peak_flops(
    dtype: str = "float32",
    device_kind: str | None = None,
    refresh: bool = False,
    path: Path | None = None,
) -> float:
    """Peak FLOP/s of one device: the vendor figure when the kind is known, else the measured
    matmul peak, cached per machine (measured again when `refresh`)."""
    kind = device_kind or jax.devices()[0].device_kind
    vendor = vendor_peak_flops(kind, dtype)
    if vendor is not None:
        return vendor
    path = path or cache_path()
    key = machine_key(kind, dtype)
    cache = _read_cache(path)
    if not refresh and key in cache:
        return float(cache[key]["flops"])
    peak = measure_matmul_peak(dtype)
    cache[key] = {"flops": peak, "sizes": list(MATMUL_SIZES), "measured_at": time.time()}
    _write_cache(path, cache)
    return peak


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _read_cache(path: Path) -> dict:
    try:
        cache = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}  # a missing or damaged cache is only a cache: measure again
    return cache if isinstance(cache, dict) else {}


def _write_cache(path: Path, cache: dict) -> None:
    """Best effort: a read-only home still trains (and measures again next time)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(path, cache)
    except OSError:
        pass
