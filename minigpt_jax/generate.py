"""Sampling: batched, with a KV cache, inside one compiled decode loop.

`python -m minigpt_jax.generate --run_dir DIR --prompt TEXT [--max_new_tokens 200 --temperature 0.8
--top_k 200 --top_p P --num_samples 1 --seed 0 --step N|best --word_rate]`

`--word_rate` first prints how many of the samples' words occur in the run's training text
(`evaluate.real_word_rate`), then the samples, so that the text itself is the last thing shown.

The prompt is run once through the model (prefill, in chunks of PREFILL_CHUNK columns), which writes
every attention layer's keys and values, and every recurrent mixer layer's fixed-size state, into
the cache; each new token then costs one column instead of a forward pass over the whole context.
The whole decode is one `lax.while_loop` under `jit`, so no Python runs between tokens. Prompts are
left-padded to a power-of-two length and the batch to a power-of-two size: a new prompt of a
similar length reuses the compiled loop instead of compiling another.

Context: the model has learned positions 0..block_size-1 only, and a KV cache cannot slide (every
cached key was computed at its position), so a prompt longer than `block_size - max_new_tokens + 1`
tokens is cropped to its last that many tokens before decoding starts.
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import sys
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging as absl_logging

from minigpt_jax.model import GPT, GPTConfig, KVCache

# Prompts longer than this are prefilled in chunks of it (a power of two, like the prompt buckets).
PREFILL_CHUNK = 512
# Seeds of sample_growing's later stages: far apart, so that no stage repeats a nearby seed's draws.
STAGE_SEED_STRIDE = 1_000_003_333


def bucket_size(n: int, minimum: int = 1) -> int:
    """The next power of two >= n: one compiled loop serves every length up to it."""
    return max(minimum, 1 << max(n - 1, 0).bit_length())


def max_prompt_tokens(block_size: int, max_new_tokens: int) -> int:
    """The longest prompt that fits: the last new token is never fed back, hence the + 1."""
    return block_size - max_new_tokens + 1


def filter_logits(
    logits_BV: jax.Array,
    temperature: jax.Array | float,
    top_k: jax.Array | int | None = None,
    top_p: jax.Array | float | None = None,
) -> jax.Array:
    """Temperature, then top-k, then top-p (nucleus): excluded tokens get -inf.

    top_k keeps every token whose logit reaches the k-th largest (ties included); top_p keeps the
    smallest set of most likely tokens whose probability reaches top_p (at least the top token).
    k and p are traced values, so changing them does not recompile.
    """
    logits_BV = logits_BV / temperature
    if top_k is not None:
        sorted_BV = -jnp.sort(-logits_BV, axis=-1)
        kth_B1 = jax.lax.dynamic_index_in_dim(sorted_BV, top_k - 1, axis=-1, keepdims=True)
        logits_BV = jnp.where(logits_BV < kth_B1, -jnp.inf, logits_BV)
    if top_p is not None:
        sorted_BV = -jnp.sort(-logits_BV, axis=-1)
        probs_BV = jax.nn.softmax(sorted_BV, axis=-1)
        mass_before_BV = jnp.cumsum(probs_BV, axis=-1) - probs_BV
        keep_BV = (mass_before_BV < top_p).at[:, 0].set(True)
        threshold_B1 = jnp.min(jnp.where(keep_BV, sorted_BV, jnp.inf), axis=-1, keepdims=True)
        logits_BV = jnp.where(logits_BV < threshold_B1, -jnp.inf, logits_BV)
    return logits_BV


def pick_tokens(
    logits_BV: jax.Array,
    key: jax.Array,
    vocab_size: int,
    temperature: jax.Array | float = 1.0,
    top_k: jax.Array | int | None = None,
    top_p: jax.Array | float | None = None,
    *,
    greedy: bool = False,
) -> jax.Array:
    """(B,) token ids, never a padded one (>= vocab_size) nor one whose logit is NaN.

    The model already gives padded ids -inf, but the guard belongs here, after the filters: a
    temperature of inf or NaN turns -inf into NaN, which `categorical` would happily pick.
    """
    if not greedy:
        logits_BV = filter_logits(logits_BV, temperature, top_k, top_p)
    real_V = jnp.arange(logits_BV.shape[-1]) < vocab_size
    logits_BV = jnp.where(real_V & ~jnp.isnan(logits_BV), logits_BV, -jnp.inf)
    if greedy:
        return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
    return jax.random.categorical(key, logits_BV, axis=-1).astype(jnp.int32)


def prefill(
    model: GPT, params: Any, tokens_BP: jax.Array, cache: KVCache, chunk: int = PREFILL_CHUNK
) -> tuple[jax.Array, KVCache]:
    """The prompt into the cache, `chunk` columns at a time: attention costs chunk x context per
    step, never P x P, and a mixer's state is carried from chunk to chunk. Returns the last
    column's logits."""
    B, P = tokens_BP.shape
    if P <= chunk:
        logits_BPV, cache = model.apply({"params": params}, tokens_BP, cache=cache)
        return logits_BPV[:, -1], cache
    if P % chunk:
        raise ValueError(f"prompt length {P} is not a multiple of the prefill chunk {chunk}")

    def body(i, carry):
        cache, _ = carry
        tokens_BC = jax.lax.dynamic_slice_in_dim(tokens_BP, i * chunk, chunk, axis=1)
        logits_BCV, cache = model.apply({"params": params}, tokens_BC, cache=cache)
        return cache, logits_BCV[:, -1]

    last_BV = jnp.zeros((B, model.config.padded_vocab_size), jnp.float32)
    cache, last_BV = jax.lax.fori_loop(0, P // chunk, body, (cache, last_BV))
    return last_BV, cache


@functools.partial(
    jax.jit,
    static_argnames=("model_cfg", "max_new_tokens", "greedy", "use_top_k", "use_top_p"),
)
def _decode(
    params: Any,
    tokens_BP: jax.Array,
    start_B: jax.Array,
    key: jax.Array,
    temperature: jax.Array,
    top_k: jax.Array,
    top_p: jax.Array,
    eot_id: jax.Array,
    *,
    model_cfg: GPTConfig,
    max_new_tokens: int,
    greedy: bool,
    use_top_k: bool,
    use_top_p: bool,
) -> jax.Array:
    """(B, max_new_tokens) new tokens; rows that reached eot are filled with eot."""
    model = GPT(model_cfg)
    B, P = tokens_BP.shape
    pick = functools.partial(
        pick_tokens,
        vocab_size=model_cfg.vocab_size,
        temperature=temperature,
        top_k=top_k if use_top_k else None,
        top_p=top_p if use_top_p else None,
        greedy=greedy,
    )
    cache = KVCache.zeros(model_cfg, B, P + max_new_tokens, start_B)
    last_BV, cache = prefill(model, params, tokens_BP, cache)
    first_B = pick(last_BV, jax.random.fold_in(key, 0))
    fill = jnp.maximum(eot_id, 0)
    out_BN = jnp.full((B, max_new_tokens), fill, jnp.int32).at[:, 0].set(first_B)

    def keep_going(carry):
        i, _, _, _, done_B = carry
        return (i < max_new_tokens) & ~jnp.all(done_B)

    def step(carry):
        i, cache, out_BN, last_B, done_B = carry
        logits_B1V, cache = model.apply({"params": params}, last_B[:, None], cache=cache)
        next_B = pick(logits_B1V[:, 0], jax.random.fold_in(key, i))
        next_B = jnp.where(done_B, fill, next_B)
        out_BN = jax.lax.dynamic_update_slice(out_BN, next_B[:, None], (0, i))
        return i + 1, cache, out_BN, next_B, done_B | (next_B == eot_id)

    carry = (jnp.ones((), jnp.int32), cache, out_BN, first_B, first_B == eot_id)
    return jax.lax.while_loop(keep_going, step, carry)[2]


def last_document(prompt: list[int], sep: int, fits: int) -> list[int]:
    """What a document-masked model sees of a prompt: its last document, which starts with `sep`
    (as every training document does; added if missing), cut to its last `fits` tokens.

    The model attends to nothing before a separator and restarts positions there, so dropping the
    earlier documents changes nothing.
    """
    start = len(prompt) - prompt[::-1].index(sep) if sep in prompt else 0  # after the separator
    body = prompt[start:]
    return [sep, *body[max(len(body) - (fits - 1), 0) :]]


def fit_prompts(
    model_cfg: GPTConfig, prompts: list[list[int]], max_new_tokens: int, eot_id: int | None
) -> list[list[int]]:
    """Each prompt cropped so that it and `max_new_tokens` fit the context (see module doc); a
    model with a document separator keeps the prompt's last document."""
    fits = max_prompt_tokens(model_cfg.block_size, max_new_tokens)
    if model_cfg.doc_sep_id < 0:
        return [list(p)[-fits:] for p in prompts]
    if eot_id != model_cfg.doc_sep_id:  # its one document ends at the next separator
        raise ValueError(
            f"this model separates documents with token {model_cfg.doc_sep_id}: "
            f"pass eot_id={model_cfg.doc_sep_id} (got {eot_id})"
        )
    return [last_document(list(p), eot_id, fits) for p in prompts]


def sample(
    model_cfg: GPTConfig,
    params: Any,
    prompts: list[list[int]],
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
    eot_id: int | None = None,
) -> list[list[int]]:
    """The new tokens of each prompt, cut before the first `eot_id`; temperature 0 is greedy.

    Prompts longer than `block_size - max_new_tokens + 1` keep their last tokens (see module doc).
    """
    if not prompts:
        raise ValueError("no prompts to continue (--num_samples must be at least 1)")
    if any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token (start with end-of-text if empty)")
    if not 1 <= max_new_tokens <= model_cfg.block_size:
        raise ValueError(
            f"max_new_tokens={max_new_tokens} must be in [1, block_size={model_cfg.block_size}]"
        )
    if not 0 <= temperature < math.inf:  # also refuses NaN
        raise ValueError(f"temperature={temperature} must be a finite number >= 0 (0 is greedy)")
    if top_k is not None and not 1 <= top_k <= model_cfg.vocab_size:
        raise ValueError(f"top_k={top_k} must be in [1, vocab_size={model_cfg.vocab_size}]")
    if top_p is not None and not 0 < top_p <= 1:
        raise ValueError(f"top_p={top_p} must be in (0, 1]")
    prompts = fit_prompts(model_cfg, prompts, max_new_tokens, eot_id)
    B, P = bucket_size(len(prompts)), bucket_size(max(len(p) for p in prompts), minimum=8)
    tokens_BP = np.zeros((B, P), np.int32)
    start_B = np.full((B,), P - 1, np.int32)  # batch-padding rows: a one-token prompt of id 0
    for b, p in enumerate(prompts):
        tokens_BP[b, P - len(p) :] = p
        start_B[b] = P - len(p)
    out_BN = _decode(
        params,
        jnp.asarray(tokens_BP),
        jnp.asarray(start_B),
        jax.random.key(seed),
        jnp.float32(max(temperature, 1e-6)),
        jnp.int32(top_k or 1),
        jnp.float32(top_p or 1.0),
        jnp.int32(-1 if eot_id is None else eot_id),
        model_cfg=model_cfg,
        max_new_tokens=max_new_tokens,
        greedy=temperature == 0,
        use_top_k=top_k is not None,
        use_top_p=top_p is not None,
    )
    results = []
    for row in np.asarray(out_BN)[: len(prompts)].tolist():
        if eot_id is not None and eot_id in row:
            row = row[: row.index(eot_id)]
        results.append(row)
    return results


def sample_growing(
    model_cfg: GPTConfig,
    params: Any,
    prompts: list[list[int]],
    max_new_tokens: int,
    *,
    first_tokens: int,
    eot_id: int | None,
    temperature: float = 1.0,
    seed: int = 0,
) -> list[list[int]]:
    """`sample`, with room for new tokens given as rows need it: every row first decodes at most
    `first_tokens`; the rows that have not ended go on from their prompt and tokens so far with
    twice the room, and so on up to `max_new_tokens`; `first_tokens=0` is one pass (`sample`).

    Why: the decode loop reads the whole cache at every token, so one pass sized for the longest
    answer a batch may need makes every short answer pay for it (2 to 3 times the sampling time
    on answers of 50 tokens under a 352-token limit; bench/rollout_bench.py). Each stage prefills
    its rows' prompt and tokens so far, which gives the logits the cache would (cache ==
    recompute), so the samples follow the same distribution as one pass; rows that end in the
    first stage draw one pass's tokens, and later stages draw their own (stage k is seeded
    `seed + k * STAGE_SEED_STRIDE`, modulo 2**32 as a PRNG key keeps it). Rows that run long pay
    for the extra prefills and for compiling each stage's shape once per process.
    """
    if first_tokens < 0:
        raise ValueError(f"first_tokens={first_tokens} must be >= 0 (0 = one pass)")
    if first_tokens == 0:
        return sample(model_cfg, params, prompts, max_new_tokens, temperature=temperature,
                      seed=seed, eot_id=eot_id)
    prompts = fit_prompts(model_cfg, prompts, max_new_tokens, eot_id)
    outs: list[list[int]] = [[] for _ in prompts]
    going, decoded, room, stage = list(range(len(prompts))), 0, first_tokens, 0
    while going:
        room = min(room, max_new_tokens)
        new = sample(model_cfg, params, [prompts[i] + outs[i] for i in going], room - decoded,
                     temperature=temperature, seed=(seed + stage * STAGE_SEED_STRIDE) % 2**32,
                     eot_id=eot_id)
        for i, tokens in zip(going, new, strict=True):
            outs[i] += tokens
        # A row cut at the stage's room has not ended (`sample` drops the eot of one that has).
        going = [i for i, t in zip(going, new, strict=True) if len(t) == room - decoded]
        if room == max_new_tokens:
            break
        decoded, room, stage = room, 2 * room, stage + 1
    return outs


def sample_in_batches(
    sample_fn: Callable[[list[list[int]], int, float, int], list[list[int]]],
    prompts: list[list[int]],
    max_new_tokens: int,
    temperature: float,
    seed: int,
    batch_size: int,
) -> list[list[int]]:
    """`sample_fn(rows, max_new_tokens, temperature, seed)` over `prompts` in chunks of exactly
    `batch_size` rows (the last padded with copies of its first), so that one compiled decode
    loop serves any number of prompts; chunk i is seeded `seed + i * batch_size`."""
    out: list[list[int]] = []
    for i in range(0, len(prompts), batch_size):
        chunk = prompts[i : i + batch_size]
        padded = chunk + [chunk[0]] * (batch_size - len(chunk))
        out += sample_fn(padded, max_new_tokens, temperature, seed + i)[: len(chunk)]
    return out


def main(argv: list[str] | None = None) -> list[str]:
    absl_logging.set_verbosity(absl_logging.ERROR)  # Orbax's notes on read-only restores
    parser = argparse.ArgumentParser(description="Sample from a trained run with a KV cache.")
    parser.add_argument("--run_dir", required=True)
    parser.add_argument("--prompt", default="\n", help="text to continue")
    parser.add_argument("--max_new_tokens", type=int, default=200)
    parser.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    parser.add_argument("--top_k", type=int, default=200, help="0 = off")
    parser.add_argument("--top_p", type=float, default=None)
    parser.add_argument("--num_samples", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--step", default=None, help="a step number, latest (default) or best")
    parser.add_argument("--data_dir", default=None, help="where the run's tokenizer file lives")
    parser.add_argument("--tokenizer", default=None, help="override: byte, gpt2 or a path")
    parser.add_argument(
        "--chat", action="store_true",
        help="wrap --prompt in the chat template of minigpt_jax.sft_data's fine-tuning data",
    )
    parser.add_argument(
        "--word_rate", action="store_true",
        help="first print the share of the samples' words that occur in the run's training text",
    )
    args = parser.parse_args(argv)

    from minigpt_jax.errors import exit_on_user_error
    from minigpt_jax.inference import inference_tokenizer, load_finite_params
    from minigpt_jax.sft_data import chat_prompt_tokens, format_chat

    with exit_on_user_error(ValueError, OSError):  # sample's ValueErrors are bad arguments
        params, record = load_finite_params(args.run_dir, args.step)
        data_dir = args.data_dir or record["config"].get("data_dir")
        tok = inference_tokenizer(record, args.tokenizer, data_dir)
        vocabulary = train_vocabulary(data_dir, tok) if args.word_rate else None
        model_cfg = record["model"]
        top_k = min(args.top_k, model_cfg.vocab_size) if args.top_k else None
        if args.chat:
            prompt_ids = chat_prompt_tokens(tok, args.prompt)
        else:
            prompt_ids = tok.encode(args.prompt) or [tok.eot_id]
        outs = sample(
            model_cfg,
            params,
            [prompt_ids] * args.num_samples,
            args.max_new_tokens,
            temperature=args.temperature,
            top_k=top_k,
            top_p=args.top_p,
            seed=args.seed,
            eot_id=tok.eot_id,
        )
    shown_prompt = format_chat(args.prompt) if args.chat else args.prompt
    texts = [shown_prompt + tok.decode(ids) for ids in outs]
    if vocabulary is not None:
        print(word_rate_report(texts, len(shown_prompt), vocabulary, data_dir), flush=True)
    try:
        for i, text in enumerate(texts):
            if args.num_samples > 1:
                print(f"--- sample {i} (step {record['step']})")
            print(text, flush=True)
    except BrokenPipeError:  # `generate ... | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing left to flush
        raise SystemExit(141) from None  # 128 + SIGPIPE, as a shell pipeline reports it
    return texts


def train_vocabulary(data_dir: str | None, tok: Any) -> set[str]:
    """The words of the run's train split, read before sampling so that a missing split fails
    first."""
    from minigpt_jax.errors import DataError
    from minigpt_jax.evaluate import train_text, words

    if not data_dir:
        raise DataError("--word_rate: the run records no data_dir; pass --data_dir")
    return words(train_text(data_dir, tok)[0].decode("utf-8", errors="replace"))


def word_rate_report(texts: list[str], start: int, vocabulary: set[str], data_dir: str) -> str:
    """One line: the share of the generated words (after `start`) found in the train split."""
    from minigpt_jax.evaluate import real_word_rate

    counts = [real_word_rate(t, vocabulary, start) for t in texts]
    found, total = sum(c[0] for c in counts), sum(c[1] for c in counts)
    if total == 0:
        return "real words: the samples hold no complete word of 2+ letters"
    return (
        f"real words: {found / total:.0%} ({found} of {total} words of 2+ letters in the "
        f"sample{'s' if len(texts) > 1 else ''} occur in {data_dir}'s train text)"
    )


if __name__ == "__main__":
    main()
