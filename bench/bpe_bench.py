"""Benchmark minigpt_jax.bpe against Hugging Face `tokenizers`, minbpe's algorithm and tiktoken.

    python bench/bpe_bench.py --out bench/results_bpe.md

All contenders run side by side in one process, interleaved, single-threaded; we report medians of
wall time and of process CPU time, and their ratios. On a shared machine wall time drifts with the
load; CPU time of a single-threaded contender does not, so the CPU ratios are the steadier result.

1. Training on `--train_mb` MB of classics (austen, shakespeare, kjv) to `--vocab_size`:
   ours vs `tokenizers` (BpeTrainer, GPT-2 byte-level pre-split, RAYON_NUM_THREADS=1 and
   TOKENIZERS_PARALLELISM=false). Target: ours <= 5x.
2. Training on `--minbpe_mb` MB to `--minbpe_vocab`: ours vs minbpe's algorithm (re-count every pair
   before every merge; RegexTokenizer.train re-implemented below). Target: ours >= 100x faster.
3. Encoding held-out text (web.jsonl): our fast path vs tiktoken's own GPT-2 encoding, one document
   at a time on one thread. Target: within 10%.
4. Bytes per token on held-out text: ours vs `tokenizers` at the same vocabulary. Target: within 2%.
"""

from __future__ import annotations

import os

# Single-threaded `tokenizers`: must be set before it is imported (rayon reads it once).
os.environ["RAYON_NUM_THREADS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import regex  # noqa: E402
import tiktoken  # noqa: E402
import tokenizers  # noqa: E402
from tokenizers import models, pre_tokenizers, trainers  # noqa: E402

from minigpt_jax.bpe import EOT_TEXT, GPT2_PATTERN, Tokenizer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def read_docs(paths: list[Path], max_bytes: float) -> list[str]:
    docs, size = [], 0
    for path in paths:
        with open(path) as f:
            for line in f:
                if size >= max_bytes:
                    return docs
                doc = json.loads(line)["text"]
                docs.append(doc)
                size += len(doc.encode("utf-8"))
    return docs


def nbytes(docs: list[str]) -> int:
    return sum(len(d.encode("utf-8")) for d in docs)


def timed(fn: Callable[[], object]) -> tuple[float, float, object]:
    """(wall seconds, CPU seconds of this process, result)."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - wall, time.process_time() - cpu, out


def interleave(
    contenders: dict[str, Callable[[], object]], repeats: int, warmup: bool = False
) -> dict[str, tuple[float, float, object]]:
    """Run each contender once per round, `repeats` rounds: drift on a shared machine hits all."""
    walls: dict[str, list] = {name: [] for name in contenders}
    cpus: dict[str, list] = {name: [] for name in contenders}
    results: dict[str, object] = {}
    if warmup:  # first calls pay for lazy set-up (tiktoken's regex, our Encoding): not timed
        for fn in contenders.values():
            fn()
    order = list(contenders.items())
    for r in range(repeats):
        for name, fn in order if r % 2 == 0 else order[::-1]:  # alternate: no one always goes first
            wall, cpu, results[name] = timed(fn)
            walls[name].append(wall)
            cpus[name].append(cpu)
    med = statistics.median
    return {name: (med(walls[name]), med(cpus[name]), results[name]) for name in contenders}


def hf_train(docs: list[str], vocab_size: int) -> tokenizers.Tokenizer:
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=[EOT_TEXT])
    tok.train_from_iterator(docs, trainer=trainer)
    return tok


# --- minbpe's algorithm (karpathy/minbpe, RegexTokenizer.train), for the baseline only -----------

def _get_stats(ids: list[int], counts: dict) -> None:
    for pair in zip(ids, ids[1:], strict=False):
        counts[pair] = counts.get(pair, 0) + 1


def _merge(ids: list[int], pair: tuple[int, int], idx: int) -> list[int]:
    out, i = [], 0
    while i < len(ids):
        if ids[i] == pair[0] and i < len(ids) - 1 and ids[i + 1] == pair[1]:
            out.append(idx)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return out


def minbpe_train(text: str, vocab_size: int) -> dict[tuple[int, int], int]:
    ids = [list(ch.encode("utf-8")) for ch in regex.findall(regex.compile(GPT2_PATTERN), text)]
    merges = {}
    for i in range(vocab_size - 256):
        stats: dict = {}
        for chunk_ids in ids:
            _get_stats(chunk_ids, stats)
        pair = max(stats, key=stats.get)
        ids = [_merge(chunk_ids, pair, 256 + i) for chunk_ids in ids]
        merges[pair] = 256 + i
    return merges


# --- the benchmark ------------------------------------------------------------------------------

def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data_dir", default=str(REPO.parent / "shared" / "data"))
    p.add_argument("--train_mb", type=float, default=5.0)
    p.add_argument("--vocab_size", type=int, default=32768)
    p.add_argument("--repeats", type=int, default=5, help="rounds of the training comparison")
    p.add_argument("--encode_repeats", type=int, default=15, help="rounds of the encoding one")
    p.add_argument("--minbpe_mb", type=float, default=1.0)
    p.add_argument("--minbpe_vocab", type=int, default=512)
    p.add_argument("--minbpe_repeats", type=int, default=1, help="minbpe takes ~1.5 min a run")
    p.add_argument("--heldout_mb", type=float, default=5.0, help="of web.jsonl")
    p.add_argument("--out", default=None, help="write the markdown results here")
    args = p.parse_args()

    data = Path(args.data_dir)
    classics = [data / "classics" / f"{n}.jsonl" for n in ("austen", "shakespeare", "kjv")]
    train_docs = read_docs(classics, args.train_mb * 1e6)
    heldout = read_docs([data / "classics" / "web.jsonl"], args.heldout_mb * 1e6)
    rows: list[str] = []

    def report(line: str) -> None:
        print(line, flush=True)
        rows.append(line)

    # 1. Training to a large vocabulary vs tokenizers.
    res = interleave({
        "ours": lambda: Tokenizer.train(train_docs, args.vocab_size),
        "hf": lambda: hf_train(train_docs, args.vocab_size),
    }, args.repeats)
    (w_ours, c_ours, ours), (w_hf, c_hf, hf) = res["ours"], res["hf"]
    mb = nbytes(train_docs) / 1e6
    report(f"\n### Training: {mb:.2f} MB ({len(train_docs)} documents) to vocabulary "
           f"{args.vocab_size}, median of {args.repeats}\n")
    report("| trainer | wall s | CPU s | time / tokenizers' (wall, CPU) |\n|---|---:|---:|---:|")
    report(f"| tokenizers {tokenizers.__version__} (Rust, 1 thread) | {w_hf:.2f} | {c_hf:.2f} | "
           f"1.00x, 1.00x |")
    report(f"| minigpt_jax.bpe (Python) | {w_ours:.2f} | {c_ours:.2f} | {w_ours / w_hf:.2f}x, "
           f"{c_ours / c_hf:.2f}x (target <= 5x) |")
    assert ours.vocab_size == hf.get_vocab_size() == args.vocab_size

    # 2. Small vocabulary vs minbpe's algorithm.
    small_text = "\n\n".join(read_docs(classics, args.minbpe_mb * 1e6))
    res = interleave({"ours": lambda: Tokenizer.train([small_text], args.minbpe_vocab + 1)},
                     max(args.repeats, 5))
    w_small, c_small, _ = res["ours"]
    minbpe_runs = [timed(lambda: minbpe_train(small_text, args.minbpe_vocab))
                   for _ in range(args.minbpe_repeats)]
    w_minbpe = statistics.median(r[0] for r in minbpe_runs)
    c_minbpe = statistics.median(r[1] for r in minbpe_runs)
    report(f"\n### Training: {len(small_text.encode()) / 1e6:.2f} MB to vocabulary "
           f"{args.minbpe_vocab} ({args.minbpe_vocab - 256} merges)\n")
    report("| trainer | wall s | CPU s | speed-up over minbpe (wall, CPU) |\n|---|---:|---:|---:|")
    report(f"| minbpe's algorithm (re-count every merge, Python) | {w_minbpe:.2f} | "
           f"{c_minbpe:.2f} | 1x, 1x |")
    report(f"| minigpt_jax.bpe (Python) | {w_small:.3f} | {c_small:.3f} | "
           f"{w_minbpe / w_small:.0f}x, {c_minbpe / c_small:.0f}x (target >= 100x) |")

    # 3. Encoding throughput: our fast path vs tiktoken's own GPT-2, one thread.
    gpt2 = Tokenizer.load(data / "gpt2.tiktoken")
    from tiktoken.load import load_tiktoken_bpe
    from tiktoken_ext.openai_public import r50k_pat_str

    tk = tiktoken.Encoding("gpt2", pat_str=r50k_pat_str,
                           mergeable_ranks=load_tiktoken_bpe(str(data / "gpt2.tiktoken")),
                           special_tokens={EOT_TEXT: 50256}, explicit_n_vocab=50257)
    ours.to_tiktoken()  # build once, outside the timing
    gpt2.to_tiktoken()
    sample = heldout[: max(len(heldout) // 10, 1)]
    hb = nbytes(heldout) / 1e6
    res = interleave({
        "tiktoken gpt2": lambda: [tk.encode_ordinary(d) for d in heldout],
        "ours gpt2": lambda: [gpt2.encode(d) for d in heldout],
        "ours trained": lambda: [ours.encode(d) for d in heldout],
        "tiktoken gpt2 batch": lambda: tk.encode_ordinary_batch(heldout, num_threads=1),
        "ours gpt2 batch": lambda: gpt2.encode_batch(heldout, num_threads=1),
    }, args.encode_repeats, warmup=True)
    assert res["ours gpt2"][2] == res["tiktoken gpt2"][2], "fast path differs from tiktoken"
    w_ref, c_ref, ref_ids = timed(lambda: [ours.encode_reference(d) for d in sample])
    assert ref_ids == res["ours trained"][2][: len(sample)], "reference differs from fast path"
    w_base, c_base, _ = res["tiktoken gpt2"]
    report(f"\n### Encoding {hb:.2f} MB of held-out text (web.jsonl, {len(heldout)} documents), "
           f"one thread, median of {args.encode_repeats}\n")
    report("| encoder | MB/s (wall) | MB/s (CPU) | throughput / tiktoken's (wall, CPU) |")
    report("|---|---:|---:|---:|")
    for name, label in [
        ("tiktoken gpt2", f"tiktoken {tiktoken.__version__} GPT-2, `encode_ordinary` per document"),
        ("ours gpt2", "ours, GPT-2 ranks, `encode` per document"),
        ("ours trained", f"ours, trained {args.vocab_size}, `encode` per document"),
        ("tiktoken gpt2 batch", "tiktoken GPT-2 `encode_ordinary_batch(num_threads=1)`"),
        ("ours gpt2 batch", "ours, GPT-2, `encode_batch(num_threads=1)`"),
    ]:
        w, c, _ = res[name]
        report(f"| {label} | {hb / w:.2f} | {hb / c:.2f} | {w_base / w:.2f}x, {c_base / c:.2f}x |")
    frac = nbytes(sample) / nbytes(heldout)
    report(f"| ours, trained {args.vocab_size}, `encode_reference` (pure Python, "
           f"{nbytes(sample) / 1e6:.2f} MB) | {hb * frac / w_ref:.2f} | {hb * frac / c_ref:.2f} | "
           f"{w_base * frac / w_ref:.3f}x, {c_base * frac / c_ref:.3f}x |")

    report("\nOur fast path is a `tiktoken.Encoding` built from our ranks, so rows 1 and 2 run the "
           "same engine on the same ranks (ids asserted equal): their gap is one Python call per "
           "document plus timing noise.")

    # 4. Compression on held-out text.
    n_ours = sum(map(len, ours.encode_batch(heldout)))
    n_hf = sum(len(e.ids) for e in hf.encode_batch(heldout))
    n_gpt2 = sum(map(len, gpt2.encode_batch(heldout)))
    bpt_ours, bpt_hf = hb * 1e6 / n_ours, hb * 1e6 / n_hf
    report(f"\n### Bytes per token on held-out web.jsonl ({hb:.2f} MB)\n")
    report("| tokenizer | tokens | bytes/token | vs tokenizers |\n|---|---:|---:|---:|")
    report(f"| tokenizers, trained {args.vocab_size} | {n_hf:,} | {bpt_hf:.3f} | 1.000 |")
    report(f"| ours, trained {args.vocab_size} | {n_ours:,} | {bpt_ours:.3f} | "
           f"{bpt_ours / bpt_hf:.3f} (target within 2%) |")
    report(f"| GPT-2 (50,257, trained on WebText) | {n_gpt2:,} | {hb * 1e6 / n_gpt2:.3f} | "
           f"{hb * 1e6 / n_gpt2 / bpt_hf:.3f} |")

    if args.out:
        header = [
            "## Tokenizer benchmark (minigpt_jax.bpe)\n",
            "Command (from the repository root):\n",
            "```\n" + " ".join(["python"] + [os.path.relpath(sys.argv[0], REPO)] + sys.argv[1:])
            + "\n```\n",
            f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores "
            f"(shared with other jobs), Python {platform.python_version()}, tiktoken "
            f"{tiktoken.__version__}, tokenizers {tokenizers.__version__}; "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
        ]
        out = Path(args.out)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text("\n".join(header + rows) + "\n")
        os.replace(tmp, out)


if __name__ == "__main__":
    main()
