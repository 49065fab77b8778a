"""Write arithmetic training shards and test problems for `configs/arithmetic.py`.

    python scripts/make_arithmetic_data.py --out_dir data/arithmetic
    python scripts/make_arithmetic_data.py --out_dir data/arithmetic_nosteps --no_steps

The code is `minigpt_jax.tasks.arithmetic.data`; `--help` lists the flags.
"""

from minigpt_jax.tasks.arithmetic.data import main

if __name__ == "__main__":
    main()
