"""Data preparation throughput against tiktoken's raw batch encoder, and peak memory at 10x size.

    python bench/data_prep_bench.py [--num_proc 2] [--repeats 5] [--scale 10]

Side by side, interleaved, medians over `--repeats`:
  raw       tiktoken `encode_ordinary_batch(texts, num_threads=num_proc)` on the classics corpus,
            texts already in memory: the tokenizer's ceiling, nothing else.
  prepare   `data_prep.prepare(...)` on the same files (read with `datasets`, tokenized in
            `num_proc` threads, shards written, sha256'd, manifest), in this process.
  command   `python scripts/download_data.py ...` as a fresh process: also interpreter start and
            imports, which a user pays once per run.
Then the same command on the corpus repeated `--scale` times (written to /tmp), with the peak
resident memory of the whole process tree (sampled every 20 ms) and of the
largest single process (getrusage).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("MINIGPT_SHARED_DATA", REPO.parent / "shared" / "data"))
FILES = [SHARED / "classics" / f"{n}.jsonl" for n in ("austen", "shakespeare", "kjv", "web")]


def read_texts(files: list[Path]) -> list[str]:
    return [json.loads(line)["text"] for f in files for line in open(f)]


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of a process and all its descendants, from /proc."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def cpu_seconds() -> tuple[float, float]:
    """(this process, its waited-for children): user + system CPU seconds so far."""
    me, kids = (resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return me.ru_utime + me.ru_stime, kids.ru_utime + kids.ru_stime


def run_command(args: list[str], env: dict[str, str]) -> tuple[float, int]:
    """Wall seconds and peak tree RSS of one download_data.py process."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(REPO / "scripts" / "download_data.py"), *args],
                            env=env)
    peak = 0
    stop = threading.Event()

    def sample():
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, tree_rss_bytes(proc.pid))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    rc = proc.wait()
    seconds = time.perf_counter() - t0
    stop.set()
    sampler.join()
    if rc != 0:
        raise SystemExit(f"download_data.py failed with {rc}: {args}")
    return seconds, peak


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--num_proc", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--scale", type=int, default=10)
    ap.add_argument("--shard_size", type=int, default=100_000_000)
    ap.add_argument("--tmp", default=tempfile.gettempdir())
    opt = ap.parse_args()

    from minigpt_jax.bpe import Tokenizer
    from minigpt_jax.data_prep import PrepArgs, prepare

    tiktoken_file = SHARED / "gpt2.tiktoken"
    env = {**os.environ, "MINIGPT_GPT2_TIKTOKEN": str(tiktoken_file)}
    os.environ.update(env)
    enc = Tokenizer.gpt2(tiktoken_file).to_tiktoken()
    texts = read_texts(FILES)
    nbytes = sum(len(t.encode("utf-8")) for t in texts)
    work = Path(tempfile.mkdtemp(prefix="data_prep_bench_", dir=opt.tmp))
    common = ["--data_files", *map(str, FILES), "--streaming=1", f"--num_proc={opt.num_proc}",
              f"--shard_size={opt.shard_size}", "--val_tokens=500000", "--progress=0"]

    raw, prep, cmd = [], [], []  # wall seconds
    raw_cpu, prep_cpu, cmd_cpu = [], [], []  # CPU seconds, all processes and threads
    for rep in range(opt.repeats):
        c0, t0 = cpu_seconds(), time.perf_counter()
        tokens = sum(map(len, enc.encode_ordinary_batch(texts, num_threads=opt.num_proc)))
        raw.append(time.perf_counter() - t0)
        raw_cpu.append(sum(cpu_seconds()) - sum(c0))

        out = work / f"prep{rep}"
        c0, t0 = cpu_seconds(), time.perf_counter()
        manifest = prepare(PrepArgs(data_files=tuple(map(str, FILES)), streaming=True,
                                    num_proc=opt.num_proc, shard_size=opt.shard_size,
                                    val_tokens=500_000, out_dir=str(out), progress=False))
        prep.append(time.perf_counter() - t0)
        prep_cpu.append(sum(cpu_seconds()) - sum(c0))
        assert sum(manifest["tokens"].values()) == tokens + len(texts)  # + one EOT per document
        shutil.rmtree(out)

        out = work / f"cmd{rep}"
        c0 = cpu_seconds()
        cmd.append(run_command([*common, f"--out_dir={out}"], env)[0])
        cmd_cpu.append(cpu_seconds()[1] - c0[1])
        shutil.rmtree(out)

    big = work / f"classics_x{opt.scale}.jsonl"
    with open(big, "wb") as f:
        for _ in range(opt.scale):
            for src in FILES:
                f.write(src.read_bytes())
    c0 = cpu_seconds()
    big_seconds, big_peak = run_command(
        ["--data_files", str(big), *common[1 + len(FILES):], f"--out_dir={work / 'big'}"], env)
    big_cpu = cpu_seconds()[1] - c0[1]
    big_manifest = json.loads((work / "big" / "manifest.json").read_text())
    big_tokens = sum(big_manifest["tokens"].values())
    max_single = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    shutil.rmtree(work)

    med = {k: statistics.median(v) for k, v in (("raw", raw), ("prep", prep), ("cmd", cmd))}
    cpu = {k: statistics.median(v) for k, v in (("raw", raw_cpu), ("prep", prep_cpu),
                                                ("cmd", cmd_cpu))}
    mb = lambda b, s: b / s / 1e6
    load = os.getloadavg()[0]
    print(f"corpus: classics, {len(texts):,} documents, {nbytes / 1e6:.1f} MB, {tokens:,} GPT-2 "
          f"tokens; num_proc={opt.num_proc}; medians of {opt.repeats}; cpus={os.cpu_count()}, "
          f"load average at the end {load:.1f}")
    print("| measurement | wall s | MB/s | throughput vs raw | CPU s | CPU ratio (raw/this) |")
    print("|---|---|---|---|---|---|")
    print(f"| raw tiktoken encode_ordinary_batch(num_threads={opt.num_proc}) | {med['raw']:.2f} | "
          f"{mb(nbytes, med['raw']):.1f} | 1.00 | {cpu['raw']:.2f} | 1.00 |")
    for key, what in (("prep", f"prepare() in process (read, tokenize in {opt.num_proc} "
                               f"threads, write shards)"),
                      ("cmd", "scripts/download_data.py, whole process (+ start, imports)")):
        print(f"| {what} | {med[key]:.2f} | {mb(nbytes, med[key]):.1f} | "
              f"{med['raw'] / med[key]:.2f} | {cpu[key]:.2f} | {cpu['raw'] / cpu[key]:.2f} |")
    big_mb = nbytes * opt.scale
    print(f"| scripts/download_data.py on the corpus x{opt.scale} ({big_mb / 1e6:.0f} MB, "
          f"{big_tokens:,} tokens) | {big_seconds:.2f} | {mb(big_mb, big_seconds):.1f} | "
          f"{(big_mb / big_seconds) / (nbytes / med['raw']):.2f} | {big_cpu:.2f} | "
          f"{cpu['raw'] * opt.scale / big_cpu:.2f} |")
    marginal = (big_cpu - cpu["cmd"]) / (opt.scale - 1)
    print(f"| marginal cost of one more corpus (x{opt.scale} minus x1 command, / {opt.scale - 1}) "
          f"| | | | {marginal:.2f} | {cpu['raw'] / marginal:.2f} |")
    print(f"peak RSS on x{opt.scale}: process tree "
          f"{big_peak / 2**20:.0f} MiB; largest single process {max_single / 2**20:.0f} MiB")
    print("raw runs (s):", [round(x, 2) for x in raw])
    print("prepare runs (s):", [round(x, 2) for x in prep])
    print("command runs (s):", [round(x, 2) for x in cmd])
    print("CPU s raw/prepare/command:", [round(x, 2) for x in raw_cpu],
          [round(x, 2) for x in prep_cpu], [round(x, 2) for x in cmd_cpu])


if __name__ == "__main__":
    main()
