"""Train a byte-level BPE tokenizer on text files and report its compression on held-out text.

    python scripts/train_tokenizer.py --input ../shared/data/classics/austen.jsonl \
        ../shared/data/classics/shakespeare.jsonl --vocab_size 8192 --out tokenizers/classics8k.json

The code is `minigpt_jax.train_tokenizer`; `--help` lists the flags.
"""

from minigpt_jax.train_tokenizer import main

if __name__ == "__main__":
    main()
