"""`python -m minigpt_jax.sft --data_files qa.jsonl --tokenizer_path gpt2 --out_dir data/qa`

The command that builds supervised fine-tuning data; the code is `minigpt_jax.sft_data`.
"""

from __future__ import annotations

import argparse
import sys

from minigpt_jax.errors import exit_on_interrupt, exit_on_user_error
from minigpt_jax.sft_data import prepare_sft


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m minigpt_jax.sft",
        description='{"prompt", "response"} JSONL -> token shards whose loss counts responses only',
    )
    p.add_argument("--data_files", nargs="+", required=True, help="JSONL files")
    p.add_argument("--val_data_files", nargs="+", default=[], help="validation JSONL files")
    p.add_argument("--val_examples", type=int, default=None,
                   help="hold out this many examples when no --val_data_files (default 5%%)")
    p.add_argument("--tokenizer_path", default="gpt2", help="'gpt2', 'byte' or a tokenizer file")
    p.add_argument("--out_dir", required=True)
    p.add_argument("--seed", type=int, default=None, help="shuffle before holding out validation")
    p.add_argument("--shard_size", type=int, default=100_000_000, help="tokens per shard")
    p.add_argument("--overwrite", action="store_true",
                   help="replace what --out_dir holds (only earlier SFT data of the same "
                        "tokenizer is replaced without it)")
    ns = p.parse_args(argv)
    with exit_on_interrupt("nothing usable was written; rerun"), exit_on_user_error(OSError):
        m = prepare_sft(ns.data_files, ns.out_dir, ns.tokenizer_path, ns.val_data_files,
                        ns.val_examples, ns.seed, ns.shard_size, ns.overwrite)
    print(
        f"{ns.out_dir}: {m['documents']['train']} train / {m['documents']['val']} val examples, "
        f"{m['tokens']['train']} train tokens ({m['target_tokens']['train']} in the loss)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
