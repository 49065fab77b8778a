"""Tasks: problems a model learns to solve, with a way to check its answers.

A task is a package under `minigpt_jax/tasks/<name>/` providing five pieces, so that data making,
evaluation and (coming) reinforcement learning can take any task without knowing which it is:

- a problem type with `.prompt` (the text the model is given, newline included) and `.answer`,
  and a seeded generator of problems (`training_problems(seed, ...)`) that never yields one of
  the held-out test problems (`heldout_problems(seed, spec)`);
- `solution(problem)`: the reference completion after the prompt (what supervised data trains on);
- a checker: `verify_solution(problem, completion) -> bool` and `parse_answer(completion)`, exact
  and independent of the generator, usable as a reward;
- a data writer (`data.write_dataset` + `data.main`): shards written with `shards.write_manifest`,
  whose `packing` field tells the trainer the chunk length when whole documents are packed;
- an evaluator (`evaluate.main`): accuracy of a run's checkpoint on the held-out problems.

The trainer imports no task: what it needs of one is in the data directory's manifest.
`minigpt_jax.tasks.arithmetic` is the first task.
"""
