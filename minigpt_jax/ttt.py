"""Test-time training: a few supervised steps on the model's own verified answers to the test
problems, on a copy of the parameters, before answering them.

No labels are used: the task's verifier (for arithmetic, the step checker) decides which sampled
solutions to keep, as in self-training / STaR, done per test set the way Akyürek et al. (2024)
fine-tune on each ARC task's own data. Whatever a test problem's verified sample teaches can carry
over to the problems that had none; the evaluator reports both groups apart so that the lift is not
just the verified samples read back.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from minigpt_jax.generate import bucket_size
from minigpt_jax.model import GPT, GPTConfig
from minigpt_jax.train_state import TrainState, make_lr_schedule, make_optimizer, make_train_step


def sft_batch(
    examples: Sequence[tuple[Sequence[int], Sequence[int]]], length: int, pad_id: int
) -> dict[str, np.ndarray]:
    """(prompt, completion) token pairs as right-padded next-token rows of `length`; the loss
    counts the completion only (the prompt is given)."""
    B = len(examples)
    tokens = np.full((B, length + 1), pad_id, np.int32)
    weights = np.zeros((B, length), np.float32)
    for b, (prompt, completion) in enumerate(examples):
        row = [*prompt, *completion][: length + 1]
        tokens[b, : len(row)] = row
        weights[b, len(prompt) - 1 : len(row) - 1] = 1.0
    return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "weights": weights}


def test_time_train(
    model_cfg: GPTConfig,
    params: Any,
    examples: Sequence[tuple[Sequence[int], Sequence[int]]],
    *,
    steps: int,
    lr: float,
    batch_size: int,
    pad_id: int,
    seed: int = 0,
) -> Any:
    """New params after `steps` AdamW steps (constant `lr`, no weight decay) on `examples`,
    `batch_size` of them per step drawn with a seeded shuffle; `params` is left as it was."""
    if not examples or steps <= 0:
        return params
    model = GPT(model_cfg)
    tx = make_optimizer(make_lr_schedule(lr, lr, 0, steps), weight_decay=0.0)
    step = jax.jit(make_train_step(model, tx, loss_chunks=0))
    longest = max(len(p) + len(c) for p, c in examples)
    length = min(bucket_size(longest - 1, minimum=32), model_cfg.block_size)
    params = jax.tree.map(jnp.copy, params)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params))
    rng, order = random.Random(seed), []
    for _ in range(steps):
        if len(order) < batch_size:
            fresh = list(range(len(examples)))
            rng.shuffle(fresh)
            order += fresh * max(1, -(-batch_size // len(fresh)))
        chosen, order = order[:batch_size], order[batch_size:]
        batch = sft_batch([examples[i] for i in chosen], length, pad_id)
        state, _ = step(state, {k: jnp.asarray(v) for k, v in batch.items()})
    return state.params
