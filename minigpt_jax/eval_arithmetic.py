"""`python -m minigpt_jax.eval_arithmetic --run_dir runs/arithmetic [--samples 8 ...]`

The command; the code is `minigpt_jax.tasks.arithmetic.evaluate` (`--help` lists the flags).
"""

from minigpt_jax.tasks.arithmetic.evaluate import main

if __name__ == "__main__":
    main()
