"""Do XLA CPU's matmul flags speed up the GEMMs the train step spends its time in?

    python bench/xla_flags_gemm.py --rounds 3

Each flag set runs in its own process (XLA_FLAGS is read once per process), in alternating order
round by round; each process times the square 2048² matmul the peak is made of
(`peak.measure_matmul_peak`) and the tied head's forward GEMM at the benchmark shape
(2048 x 256 by 256 x 50304), best of 3 each. Medians over rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FLAGS = {
    "default": "",
    "xnnpack": "--xla_cpu_use_xnnpack=true",
    "onednn": "--xla_cpu_use_onednn=true",
    "vector_512": "--xla_cpu_prefer_vector_width=512",
}
CODE = r"""
import json, time
import jax, jax.numpy as jnp
from minigpt_jax.peak import measure_matmul_peak
square = measure_matmul_peak(sizes=(2048,), repeats=3)
x, w = jnp.ones((2048, 256)), jnp.ones((50304, 256))
head = jax.jit(lambda x, w: jnp.einsum("md,vd->mv", x, w))
head(x, w).block_until_ready()
best = float("inf")
for _ in range(3):
    t0 = time.perf_counter()
    head(x, w).block_until_ready()
    best = min(best, time.perf_counter() - t0)
print("R", json.dumps({"square": square / 1e9, "head": 2 * 2048 * 256 * 50304 / best / 1e9}))
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    results: dict[str, list[dict[str, float]]] = {name: [] for name in FLAGS}
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    for r in range(args.rounds):
        for name in list(FLAGS) if r % 2 == 0 else list(FLAGS)[::-1]:
            proc = subprocess.run(
                [sys.executable, "-c", CODE],
                env={**env, "XLA_FLAGS": FLAGS[name]},
                capture_output=True,
                text=True,
                check=True,
            )
            line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("R "))
            results[name].append(json.loads(line[2:]))
    print("| XLA_FLAGS | square 2048² GFLOP/s | head GEMM GFLOP/s | rounds |")
    print("|---|---:|---:|---:|")
    for name, rs in results.items():
        sq = statistics.median(x["square"] for x in rs)
        hd = statistics.median(x["head"] for x in rs)
        print(f"| {FLAGS[name] or '(default)'} | {sq:.1f} | {hd:.1f} | {len(rs)} |")


if __name__ == "__main__":
    main()
