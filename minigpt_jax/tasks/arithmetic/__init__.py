"""Chain-of-thought arithmetic: calculator problems, worked solutions, an exact step verifier.

    problems.py  Problem, worked solutions, the training mixture and held-out test sets
    checker.py   parse_answer, check_steps / verify_solution (the reward), steps_are_right,
                 right_lines (per-line process credit), votes
    data.py      the data writer (`python scripts/make_arithmetic_data.py`)
    evaluate.py  the evaluator (`python -m minigpt_jax.eval_arithmetic`)

`from minigpt_jax.tasks.arithmetic import Problem`; `Problem("+", 347, 85).prompt == "347+085\\n"`.
The evaluator and data writer load with their own modules (they pull in JAX and the shard code).
"""

from minigpt_jax.tasks.arithmetic.checker import (
    StepError,
    check_steps,
    majority_vote,
    parse_answer,
    right_lines,
    steps_are_right,
    true_step_fraction,
    verified_vote,
    verify_solution,
)
from minigpt_jax.tasks.arithmetic.problems import (
    ANSWER_PREFIX,
    HELDOUT_SPEC,
    LAYOUTS,
    LONG_SPEC,
    MIN_WIDTH,
    OP_NAMES,
    OPS,
    PRESETS,
    Mixture,
    Problem,
    cell_digits,
    cell_label,
    cell_size,
    document,
    heldout_problems,
    length_specs,
    make_problem,
    random_int,
    sample_problem,
    solution,
    training_problems,
    written_answer,
)

__all__ = [
    "ANSWER_PREFIX", "HELDOUT_SPEC", "LONG_SPEC", "MIN_WIDTH", "LAYOUTS", "OP_NAMES", "OPS",
    "PRESETS",
    "Mixture",
    "Problem", "StepError", "cell_digits", "cell_label", "cell_size", "check_steps", "document",
    "heldout_problems", "length_specs",
    "majority_vote",
    "make_problem", "parse_answer", "random_int", "sample_problem", "solution",
    "right_lines",
    "steps_are_right",
    "training_problems", "true_step_fraction", "verified_vote", "verify_solution", "written_answer",
]
