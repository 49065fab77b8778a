"""GPT-2 as a functional Flax model, plus the architecture switches of modern GPTs.

The defaults are GPT-2 exactly; each GPTConfig field below `doc_sep_id` swaps one part for what
modded-nanogpt's records use (RoPE, RMSNorm, no biases, QK-norm, ReLU^2 or SwiGLU, an untied head,
zero-initialised output projections, logit soft-capping). Norms and MLPs live in `layers.py`, RoPE
in `positions.py`; this file wires them.

Module and parameter names follow OpenAI's GPT-2 tensors (`wte`, `wpe`, `h_{i}.attn.c_attn`, ...) so
that importing or exporting Hugging Face weights is a name-for-name copy. Flax `Dense` kernels are
laid out (in, out), which is exactly GPT-2's `Conv1D` layout: no transposes either way.

Shape suffixes: B batch, T time, D model width, H heads, K head width, V (padded) vocabulary.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from minigpt_jax.digit_positions import (
    DOC_STARTS,
    SCHEMES,
    coupled_indices,
    digit_indices,
    document_block_offsets,
    run_marks,
    segment_indices,
)
from minigpt_jax.layers import MLP, MLPS, NORMS, dense, norm, residual_std, rms_normalize
from minigpt_jax.mixers import DeltaState, GatedDeltaNet
from minigpt_jax.positions import random_gaps, rope, stretch_positions

# Token mixers a layer can use. Only mixers that pass tests/test_mixers.py and the model tests
# (recurrent == parallel, causality, document resets, generation == recompute) are listed.
MIXERS = ("attention", "gated_deltanet")

_PRESETS: dict[str, dict[str, Any]] = {
    # OpenAI's four GPT-2 sizes.
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768),
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024),
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280),
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600),
    # CPU-sized models: `small` is the benchmark config, `tiny` is for tests.
    "small": dict(n_layer=4, n_head=4, n_embd=256, block_size=256),
    "tiny": dict(n_layer=2, n_head=2, n_embd=64, block_size=64),
}
# The modern stack: provisional, pending the full speedrun bench (bench/speedrun.py).
MODERN = dict(
    pos_emb="rope",
    norm="rmsnorm",
    bias=False,
    qk_norm=True,
    mlp="relu2",
    tie_embeddings=False,
    zero_init_proj=True,
    logit_softcap=15.0,
)
_PRESETS["small-modern"] = {**_PRESETS["small"], **MODERN}
_PRESETS["gpt2-modern"] = {**_PRESETS["gpt2"], **MODERN}
POS_EMBS = ("learned", "rope", "none")
MAX_ROPE_POSITION = 2**24  # float32 represents every integer position up to here

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class GPTConfig:
    vocab_size: int = 50257
    block_size: int = 1024  # the longest context the position table holds
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    dropout: float = 0.0
    # Embedding rows are padded to a multiple of this for fast matmuls (50257 -> 50304); the padded
    # logits are masked to -inf so they never win and never take probability mass.
    vocab_multiple: int = 64
    # Parameters are always float32; this is the dtype matmuls and attention run in.
    compute_dtype: str = "float32"
    # "xla" works everywhere; "cudnn" is the fused flash-attention kernel (GPU, bf16/fp16);
    # "auto" picks cudnn on GPU with bf16 compute and xla otherwise.
    attention_impl: str = "auto"
    remat: bool = False  # recompute each block's activations in the backward pass
    # Packed documents: when >= 0, this token (the tokenizer's end-of-text) starts a document, each
    # token attends only within its own document and positions restart at 0 there. A short document
    # packed anywhere in a window then trains exactly as it is prompted at inference, at position 0
    # (arithmetic, SFT). -1: one causal stream, as GPT-2.
    doc_sep_id: int = -1
    # Architecture switches (GPT-2's choice first).
    pos_emb: str = "learned"  # "learned" table | "rope" (rotary) | "none" (causal mask only)
    norm: str = "layernorm"  # "layernorm" | "rmsnorm"
    bias: bool = True  # biases in every dense layer and LayerNorm
    qk_norm: bool = False  # queries and keys RMS-normalised per head before the scores
    mlp: str = "gelu"  # "gelu" | "relu2" (ReLU squared) | "swiglu" (see layers.mlp_width)
    tie_embeddings: bool = True  # False: the head is its own (V, D) parameter `lm_head`
    zero_init_proj: bool = False  # attention and MLP output projections start at zero
    logit_softcap: float = 0.0  # c > 0: logits = c * tanh(logits / c) (training and inference)
    # Token mixer of each layer (see MIXERS and minigpt_jax/mixers.py). attention_every: 0 = every
    # layer uses `mixer`; k > 0 = every k-th layer (k-1, 2k-1, ...) is attention, the rest `mixer`.
    mixer: str = "attention"
    attention_every: int = 0
    # Digit positions (Abacus, see digit_positions.py): > 0 adds a learned embedding of each digit
    # token's index within its number, indices 1..digit_pos_max (larger ones share the last row).
    # Training adds a random offset in [0, digit_pos_offset_max) per sequence; `digit_ids` are the
    # tokenizer's single-digit ids (`digit_positions.digit_token_ids`).
    digit_pos_max: int = 0
    digit_pos_offset_max: int = 0
    digit_ids: tuple[int, ...] = ()
    # "abacus": each digit's index within its number; "coupled": the column a token belongs to,
    # prompt digits from the right and every later line by its line number (digit_positions.py),
    # which needs the tokenizer's `newline_ids` (`digit_positions.newline_token_ids`).
    digit_pos_scheme: str = "abacus"
    newline_ids: tuple[int, ...] = ()
    # With "coupled" ids, > 0 adds a learned embedding of each token's segment within its line (a
    # run of digits or of non-digits, counted from 1; 0 is a line break; segments from
    # line_segment_max - 1 on share the last row), the prompt
    # line's apart from the rest (digit_positions.segment_indices): which number of its line a
    # token belongs to, bounded whatever the numbers' lengths.
    line_segment_max: int = 0
    # Training only: w > 0 lets the packed documents of a row attend to each other (no document
    # mask in training; evaluation and decoding keep it) and gives each its own offset from a
    # distinct block of w digit-position ids (digit_positions.document_block_offsets) instead of
    # digit_pos_offset_max's one offset per row, so every id is contrasted with ids at every
    # distance, not only those of its own problem.
    digit_pos_doc_block: int = 0
    # How each document's start in its block is drawn (digit_positions.DOC_STARTS): "half" of
    # the block, blind; or "fit" the document's ids (of both tables, with digit_pos_from_left).
    digit_pos_doc_start: str = "half"
    # With "coupled" ids, True adds a second learned table: each digit's index from its number's
    # first digit (Abacus), shifted by the same training offsets. Coupled ids count a prompt
    # number from its right end, which is what + - x read; long division reads the dividend
    # from its left, and writes its quotient in that order, so step line i needs "the prompt
    # digit i from the left" and the answer's digit i "step line i": one lookup each only with
    # this index (docs/arithmetic.md).
    digit_pos_from_left: bool = False
    # With "coupled" ids: the operator token ids (long division's `/`, `division_token_ids`)
    # whose documents read their prompt from the left: prompt digits indexed from their number's
    # left end, and the digit run right after an `answer_mark_ids` token (`A:`'s colon,
    # `answer_mark_token_ids`) from its own left end. Long division's step line i reads the
    # dividend's digit i from the left, and its answer's digit i step line i: right-end ids make
    # both lookups depend on the length (digit_positions.coupled_indices). Other documents are
    # untouched. Both set, or neither.
    left_op_ids: tuple[int, ...] = ()
    answer_mark_ids: tuple[int, ...] = ()
    # With left_op_ids: True shifts the dividend's and the quotient's ids so that each of those
    # lookups is "same id" from the token that predicts the digit (coupled_indices'
    # left_read_shift); the plain left-read ids make them a shift, which a model learns only on
    # the step lines it was trained on.
    left_read_shift: bool = False
    # With digit positions, True adds a learned embedding of whether a digit starts its run of
    # digits (two rows: a run's first digit, any later one). It is length-blind where
    # digit_pos_from_left is not: in `a+b+c=XY` the carry X of line m - 1 and the units Y of
    # line m share coupled id m and their segment, and the answer line's copy of Y took X instead
    # (BENCHMARKS.md, session 14); X starts its run and Y does not, at every length.
    digit_run_start: bool = False
    # Randomized positions, a variant of Ruoss et al. 2023, with pos_emb="rope": g > 1 stretches
    # each training document's positions by random gaps (a scale s in 1..g per document, each gap
    # in 1..s; positions.random_gaps), so no lookup can rely on an exact distance and distances
    # beyond the training documents' lengths get trained. Evaluation and decoding use gap 1,
    # which training sees in the documents drawn at s = 1. Training-only, so not in
    # ARCHITECTURE_FIELDS (the parameters are the same).
    rope_gap_max: int = 0

    def __post_init__(self):
        for field in ("digit_ids", "newline_ids", "left_op_ids", "answer_mark_ids"):  # JSON lists
            ids = getattr(self, field)
            try:
                object.__setattr__(self, field, tuple(int(i) for i in ids))
            except (TypeError, ValueError):
                raise ValueError(f"{field}={ids!r}: use a tuple of token ids, e.g. (47,)") from None
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        if self.compute_dtype not in DTYPES:
            raise ValueError(f"compute_dtype={self.compute_dtype!r}: use one of {sorted(DTYPES)}")
        if self.attention_impl not in ("auto", "xla", "cudnn"):
            raise ValueError(f"attention_impl={self.attention_impl!r}: use auto, xla or cudnn")
        if not -1 <= self.doc_sep_id < self.vocab_size:
            raise ValueError(
                f"doc_sep_id={self.doc_sep_id}: use -1 (off) or a token id below "
                f"vocab_size={self.vocab_size}"
            )
        if self.doc_sep_id >= 0 and self.attention_impl == "cudnn":
            raise ValueError("doc_sep_id needs a document mask: use attention_impl 'xla' or 'auto'")
        for field, allowed in (("pos_emb", POS_EMBS), ("norm", NORMS), ("mlp", MLPS)):
            if getattr(self, field) not in allowed:
                value = getattr(self, field)
                raise ValueError(f"{field}={value!r}: use one of {', '.join(allowed)}")
        if self.pos_emb == "rope" and (self.n_embd // self.n_head) % 2:
            raise ValueError(
                f"pos_emb='rope' rotates channel pairs: head width n_embd/n_head="
                f"{self.n_embd // self.n_head} must be even"
            )
        if not self.logit_softcap >= 0:
            raise ValueError(f"logit_softcap={self.logit_softcap}: use 0 (off) or a positive cap")
        if self.mixer not in MIXERS:
            raise ValueError(f"mixer={self.mixer!r}: use one of {', '.join(MIXERS)}")
        if self.attention_every < 0 or (self.attention_every and self.mixer == "attention"):
            raise ValueError(
                f"attention_every={self.attention_every}: use 0 (every layer is `mixer`) or, "
                f"with a mixer other than attention, k > 0 for attention in every k-th layer"
            )

        if self.rope_gap_max < 0 or (self.rope_gap_max > 0 and self.pos_emb != "rope"):
            raise ValueError(
                f"rope_gap_max={self.rope_gap_max} with pos_emb={self.pos_emb!r}: use 0 (off), "
                f"or g >= 1 with pos_emb='rope' (random gaps 1..g between rotary positions)"
            )
        if self.rope_gap_max * self.block_size > MAX_ROPE_POSITION:
            raise ValueError(
                f"rope_gap_max={self.rope_gap_max}: stretched positions reach rope_gap_max x "
                f"block_size={self.block_size}, past {MAX_ROPE_POSITION} (2^24, where float32 "
                f"rotation angles stop being exact); use a smaller gap"
            )
        if self.digit_pos_max < 0 or not 0 <= self.digit_pos_offset_max < max(
            self.digit_pos_max, 1
        ):
            raise ValueError(
                f"digit_pos_max={self.digit_pos_max}, digit_pos_offset_max="
                f"{self.digit_pos_offset_max}: use 0 (off), or 0 <= offset_max < digit_pos_max"
            )
        if self.digit_pos_max and not (
            self.digit_ids and all(0 <= i < self.vocab_size for i in self.digit_ids)
        ):
            raise ValueError(
                f"digit_pos_max={self.digit_pos_max} needs digit_ids: the tokenizer's digit token "
                f"ids below vocab_size={self.vocab_size} (digit_positions.digit_token_ids)"
            )
        if self.digit_pos_scheme not in SCHEMES:
            raise ValueError(
                f"digit_pos_scheme={self.digit_pos_scheme!r}: use one of {', '.join(SCHEMES)}"
            )
        if self.digit_pos_scheme == "coupled" and not (
            self.digit_pos_max
            and self.newline_ids
            and all(0 <= i < self.vocab_size for i in self.newline_ids)
        ):
            raise ValueError(
                f"digit_pos_scheme='coupled' needs digit_pos_max > 0 (got {self.digit_pos_max}) "
                f"and newline_ids: the tokenizer's newline token ids below vocab_size="
                f"{self.vocab_size} (digit_positions.newline_token_ids)"
            )
        if self.digit_pos_doc_block and not (
            self.digit_pos_doc_block >= 2
            and self.digit_pos_max >= 2 * self.digit_pos_doc_block
            and self.digit_pos_offset_max == 0
            and self.doc_sep_id >= 0
            and self.pos_emb != "rope"
        ):
            raise ValueError(
                f"digit_pos_doc_block={self.digit_pos_doc_block}: use 0 (off), or a block width "
                f">= 2 with digit_pos_max >= 2 x width (got {self.digit_pos_max}), "
                f"digit_pos_offset_max=0 (got {self.digit_pos_offset_max}: the blocks replace it) "
                f"and a doc_sep_id (got {self.doc_sep_id}), not with pos_emb='rope' (positions "
                f"restart per document, so distances across documents would be meaningless)"
            )
        if self.line_segment_max < 0 or self.line_segment_max == 1 or (
            self.line_segment_max and self.digit_pos_scheme != "coupled"
        ):
            raise ValueError(
                f"line_segment_max={self.line_segment_max}: use 0 (off), or >= 2 with "
                f"digit_pos_scheme='coupled' (got {self.digit_pos_scheme!r})"
            )

        if self.digit_pos_doc_start not in DOC_STARTS:
            raise ValueError(
                f"digit_pos_doc_start={self.digit_pos_doc_start!r}: use one of {DOC_STARTS}"
            )
        if self.digit_run_start and not self.digit_pos_max:
            raise ValueError(
                "digit_run_start=True marks digits within their runs: set digit_pos_max > 0 "
                "and digit_ids (digit_positions.digit_token_ids)"
            )
        read_ids = self.left_op_ids + self.answer_mark_ids
        if read_ids and not (
            self.left_op_ids and self.answer_mark_ids and self.digit_pos_scheme == "coupled"
            and self.doc_sep_id >= 0
        ):
            raise ValueError(
                f"left_op_ids={list(self.left_op_ids)}, answer_mark_ids="
                f"{list(self.answer_mark_ids)}: set both (digit_positions.division_token_ids "
                f"and answer_mark_token_ids) with digit_pos_scheme='coupled' (got "
                f"{self.digit_pos_scheme!r}) and doc_sep_id >= 0 (got {self.doc_sep_id}: a "
                f"left-read document must end at a separator), or neither"
            )
        if self.left_read_shift and not self.left_op_ids:
            raise ValueError(
                "left_read_shift=True shifts the ids of left-read documents: set left_op_ids "
                "and answer_mark_ids too"
            )
        taken = set(self.digit_ids) | set(self.newline_ids) | {self.doc_sep_id}
        if read_ids and not all(0 <= i < self.vocab_size and i not in taken for i in read_ids):
            raise ValueError(
                f"left_op_ids={list(self.left_op_ids)}, answer_mark_ids="
                f"{list(self.answer_mark_ids)}: each must be a token id below vocab_size="
                f"{self.vocab_size} that is not a digit, a newline or doc_sep_id"
            )
        if self.digit_pos_from_left and self.digit_pos_scheme != "coupled":
            raise ValueError(
                f"digit_pos_from_left=True adds to coupled ids: set digit_pos_scheme='coupled' "
                f"(got {self.digit_pos_scheme!r}; 'abacus' ids already count from the left)"
            )

    def is_attention(self, layer: int) -> bool:
        every = self.attention_every
        return self.mixer == "attention" or (every > 0 and (layer + 1) % every == 0)

    @property
    def attention_layers(self) -> list[int]:
        return [i for i in range(self.n_layer) if self.is_attention(i)]

    @property
    def mixer_layers(self) -> list[int]:
        return [i for i in range(self.n_layer) if not self.is_attention(i)]


    def gpt2_differences(self) -> list[str]:
        """The architecture switches set away from GPT-2 (empty for GPT-2 itself)."""
        default = GPTConfig()
        return [
            f"{name}={getattr(self, name)!r}"
            for name in ARCHITECTURE_FIELDS
            if getattr(self, name) != getattr(default, name)
        ]

    @property
    def padded_vocab_size(self) -> int:
        return math.ceil(self.vocab_size / self.vocab_multiple) * self.vocab_multiple

    @property
    def dtype(self):
        return DTYPES[self.compute_dtype]

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> GPTConfig:
        if name not in _PRESETS:
            raise ValueError(f"unknown model preset {name!r}; known: {', '.join(_PRESETS)}")
        return cls(**{**_PRESETS[name], **overrides})


# The fields that change what the parameters compute (everything above is size, dtype or kernel).
ARCHITECTURE_FIELDS = (
    "pos_emb", "norm", "bias", "qk_norm", "mlp", "tie_embeddings", "zero_init_proj",
    "logit_softcap", "mixer", "attention_every", "digit_pos_max", "digit_pos_scheme",
    "line_segment_max", "digit_pos_from_left", "digit_run_start", "left_op_ids",
    "answer_mark_ids", "left_read_shift",
)


def _resolve_attention_impl(config: GPTConfig) -> str:
    if config.attention_impl != "auto":
        return config.attention_impl
    if config.doc_sep_id >= 0:  # an arbitrary mask: the XLA path takes any
        return "xla"
    on_gpu = jax.default_backend() == "gpu"
    return "cudnn" if on_gpu and config.compute_dtype == "bfloat16" else "xla"


class KVCache(flax.struct.PyTreeNode):
    """What decoding carries (`GPT.__call__(..., cache=...)`): keys and values of every attention
    layer, and the fixed-size recurrent state of every mixer layer (stacked in layer order).

    Rows are left-padded so that all prompts of a batch end in the same column and every decode
    step writes one column for the whole batch: `start_B` is each row's first real column, `index`
    the next column to write. A row's positions count from its own start: padding never shifts them,
    and a mixer's state starts afresh at that column.
    """

    k_LBHSK: jax.Array  # heads before columns: attention reads each head's keys contiguously
    v_LBHSK: jax.Array
    start_B: jax.Array  # int32, first non-padding column of each row
    index: jax.Array  # int32 scalar, the column the next token is written to
    mixer: DeltaState  # leaves stacked over the mixer layers (leading axis of size 0 if none)
    digit_run_B: jax.Array  # int32, the digit run the last written column ends (digit positions)
    digit_line_B: jax.Array  # int32, the line the last written column is in ("coupled" ids)
    digit_segment_B: jax.Array  # int32, the segment of its line the last written column is in
    digit_read_B: jax.Array  # int32, left-read state: bit 0 the document, bit 1 an answer run

    @classmethod
    def zeros(cls, config: GPTConfig, batch: int, length: int, start_B: jax.Array) -> KVCache:
        H = config.n_head
        shape = (len(config.attention_layers), batch, H, length, config.n_embd // H)
        one = DeltaState.zeros(batch, config.n_embd, H, config.dtype)
        n_mixer = len(config.mixer_layers)
        return cls(
            k_LBHSK=jnp.zeros(shape, config.dtype),
            v_LBHSK=jnp.zeros(shape, config.dtype),
            start_B=jnp.asarray(start_B, jnp.int32),
            index=jnp.zeros((), jnp.int32),
            mixer=jax.tree.map(lambda x: jnp.zeros((n_mixer, *x.shape), x.dtype), one),
            digit_run_B=jnp.zeros((batch,), jnp.int32),
            digit_line_B=jnp.zeros((batch,), jnp.int32),
            digit_segment_B=jnp.zeros((batch,), jnp.int32),
            digit_read_B=jnp.zeros((batch,), jnp.int32),
        )


def _cached_attention(
    q_BTHK: jax.Array, k_BTHK: jax.Array, v_BTHK: jax.Array, cache: KVCache, layer: int
) -> jax.Array:
    """Attention of T new columns over the cache of one layer and over themselves.

    The cache is only read here (the model writes the new columns into it in place): cached and
    new columns are scored apart and share one softmax, because building "this layer's cache with
    the new columns" copies the whole layer every decoded token. The cache is laid out (batch,
    head, column, dim) so that both matmuls read it as stored, without a transpose.
    """
    T, S = q_BTHK.shape[1], cache.k_LBHSK.shape[3]
    f32, dtype = jnp.float32, q_BTHK.dtype
    # a barrier, so that a fresh cache's index (a constant 0 in prefill) is not folded into
    # compile-time evaluation of an all-masked score matrix
    index = jax.lax.optimization_barrier(cache.index)
    col_S, t_T = jnp.arange(S), jnp.arange(T)
    old_B11S = ((col_S[None, :] < index) & (col_S[None, :] >= cache.start_B[:, None]))[
        :, None, None, :
    ]
    # new columns: causal and real, or the query's own column (a padding column attends to itself
    # only: no row is fully masked, so no NaN enters the cache)
    real_BT = (index + t_T)[None, :] >= cache.start_B[:, None]
    self_TT = t_T[None, :] == t_T[:, None]
    new_B1TT = (((t_T[None, :] <= t_T[:, None])[None] & real_BT[:, None, :]) | self_TT[None])[
        :, None
    ]
    q_BHTK = q_BTHK.transpose(0, 2, 1, 3) * (q_BTHK.shape[-1] ** -0.5)
    k_BHTK, v_BHTK = k_BTHK.transpose(0, 2, 1, 3), v_BTHK.transpose(0, 2, 1, 3)
    k_old_BHSK = cache.k_LBHSK[layer].astype(dtype)
    v_old_BHSK = cache.v_LBHSK[layer].astype(dtype)
    s_old_BHTS = jnp.einsum("bhtk,bhsk->bhts", q_BHTK, k_old_BHSK, preferred_element_type=f32)
    s_new_BHTU = jnp.einsum("bhtk,bhuk->bhtu", q_BHTK, k_BHTK, preferred_element_type=f32)
    s_old_BHTS = jnp.where(old_B11S, s_old_BHTS, -jnp.inf)
    s_new_BHTU = jnp.where(new_B1TT, s_new_BHTU, -jnp.inf)
    m_BHT1 = jnp.maximum(s_old_BHTS.max(-1, keepdims=True), s_new_BHTU.max(-1, keepdims=True))
    p_old_BHTS, p_new_BHTU = jnp.exp(s_old_BHTS - m_BHT1), jnp.exp(s_new_BHTU - m_BHT1)
    total_BHT1 = p_old_BHTS.sum(-1, keepdims=True) + p_new_BHTU.sum(-1, keepdims=True)
    y_BHTK = jnp.einsum("bhts,bhsk->bhtk", p_old_BHTS.astype(dtype), v_old_BHSK,
                        preferred_element_type=f32)
    y_BHTK += jnp.einsum("bhtu,bhuk->bhtk", p_new_BHTU.astype(dtype), v_BHTK,
                         preferred_element_type=f32)
    return (y_BHTK / total_BHT1).transpose(0, 2, 1, 3).astype(dtype)


class CausalSelfAttention(nn.Module):
    config: GPTConfig

    @nn.compact
    def __call__(
        self,
        x_BTD: jax.Array,
        deterministic: bool,
        doc_mask_B1TT: jax.Array | None = None,
        pos_BT: jax.Array | None = None,
        cache: KVCache | None = None,
        layer: int = 0,
    ) -> jax.Array | tuple[jax.Array, tuple[jax.Array, jax.Array]]:
        cfg = self.config
        B, T, D = x_BTD.shape
        H, K = cfg.n_head, D // cfg.n_head
        qkv_BT3D = dense(3 * D, cfg, "c_attn")(x_BTD)
        q_BTHK, k_BTHK, v_BTHK = (t.reshape(B, T, H, K) for t in jnp.split(qkv_BT3D, 3, axis=-1))
        if cfg.qk_norm:
            q_BTHK, k_BTHK = rms_normalize(q_BTHK), rms_normalize(k_BTHK)
        if cfg.pos_emb == "rope":  # the cache holds rotated keys: each is rotated once
            q_BTHK, k_BTHK = rope(q_BTHK, pos_BT), rope(k_BTHK, pos_BT)
        if cache is None:
            y_BTHK = jax.nn.dot_product_attention(
                q_BTHK,
                k_BTHK,
                v_BTHK,
                mask=doc_mask_B1TT,
                is_causal=True,
                implementation=_resolve_attention_impl(cfg),
            )
        else:
            y_BTHK = _cached_attention(q_BTHK, k_BTHK, v_BTHK, cache, layer)
        y_BTD = dense(D, cfg, "c_proj", std=residual_std(cfg))(y_BTHK.reshape(B, T, D))
        y_BTD = nn.Dropout(cfg.dropout)(y_BTD, deterministic=deterministic)
        return y_BTD if cache is None else (y_BTD, (k_BTHK, v_BTHK))


class Block(nn.Module):
    """Pre-norm residual block: a token mixer (attention or `cfg.mixer`, by `is_attention`), an MLP.

    `layer` is the block's index among the layers of its own kind: its slot in the cache stacks.
    """

    config: GPTConfig
    attention: bool = True

    @nn.compact
    def __call__(
        self,
        x_BTD: jax.Array,
        deterministic: bool,
        doc_mask_B1TT: jax.Array | None = None,
        pos_BT: jax.Array | None = None,
        reset_BT: jax.Array | None = None,
        cache: KVCache | None = None,
        layer: int = 0,
    ) -> jax.Array | tuple[jax.Array, Any]:
        cfg = self.config
        h_BTD = norm(cfg, "ln_1")(x_BTD)
        carry = None  # what this layer adds to the cache: new keys and values, or its next state
        if self.attention:
            attn = CausalSelfAttention(cfg, name="attn")
            if cache is None:
                y_BTD = attn(h_BTD, deterministic, doc_mask_B1TT, pos_BT)
            else:
                y_BTD, carry = attn(h_BTD, deterministic, pos_BT=pos_BT, cache=cache, layer=layer)
        else:
            mixer = GatedDeltaNet(
                cfg.n_embd,
                cfg.n_head,
                dtype=cfg.dtype,
                proj_init=nn.initializers.normal(residual_std(cfg)),
                name="mixer",
            )
            state = None if cache is None else jax.tree.map(lambda x: x[layer], cache.mixer)
            y_BTD, carry = mixer(h_BTD, reset_BT, state)
            y_BTD = nn.Dropout(cfg.dropout)(y_BTD, deterministic=deterministic)
        x_BTD = x_BTD + y_BTD
        x_BTD = x_BTD + MLP(cfg, name="mlp")(norm(cfg, "ln_2")(x_BTD), deterministic)
        return x_BTD if cache is None else (x_BTD, carry)


class GPT(nn.Module):
    config: GPTConfig

    @nn.compact
    def __call__(
        self,
        tokens_BT: jax.Array,
        deterministic: bool = True,
        cache: KVCache | None = None,
        return_hidden: bool = False,
    ) -> jax.Array | tuple[jax.Array, KVCache]:
        """Float32 logits over the padded vocabulary; padded entries are -inf.

        With `cache`, the tokens are the next columns of a decode (prefill or one step): returns the
        logits and the cache with these columns written (see `minigpt_jax.generate`).
        `return_hidden=True` returns the final norm's float32 output instead of logits, for a loss
        that applies the head itself (`loss.head_cross_entropy` with `head_weight(params, config)`).
        """
        cfg = self.config
        T = tokens_BT.shape[1]
        if T > cfg.block_size:
            raise ValueError(f"sequence length {T} exceeds the model's block_size {cfg.block_size}")
        embed_init = nn.initializers.normal(0.02)
        wte = nn.Embed(cfg.padded_vocab_size, cfg.n_embd, embedding_init=embed_init, name="wte")
        head_VD = wte.embedding if cfg.tie_embeddings else None
        if not cfg.tie_embeddings:
            head_VD = self.param("lm_head", embed_init, (cfg.padded_vocab_size, cfg.n_embd))
        doc_mask_B1TT = None
        # Where a mixer's state starts afresh: each document's first token; in a decode, also each
        # row's first real column (the left padding before it is forgotten). doc_sep_id=-1 never
        # matches a token.
        reset_BT = tokens_BT == cfg.doc_sep_id
        if cache is None and cfg.doc_sep_id >= 0:
            pos_BT, doc_mask_B1TT = document_positions_and_mask(tokens_BT, cfg.doc_sep_id)
            if cfg.digit_pos_doc_block and not deterministic:  # documents see each other's ids
                doc_mask_B1TT = None
        elif cache is None:
            pos_BT = jnp.arange(T)[None]
        else:  # each row counts positions from its own first real column
            col_BT = cache.index + jnp.arange(T)[None]
            pos_BT = jnp.clip(col_BT - cache.start_B[:, None], 0, cfg.block_size - 1)
            reset_BT = reset_BT | (col_BT == cache.start_B[:, None])
        if cfg.rope_gap_max > 1 and cache is None and not deterministic:
            pos_BT = jnp.broadcast_to(pos_BT, tokens_BT.shape)
            gap_BT = random_gaps(self.make_rng("positions"), pos_BT, cfg.rope_gap_max)
            pos_BT = stretch_positions(pos_BT, gap_BT)
        x_BTD = wte(tokens_BT)
        if cfg.pos_emb == "learned":
            x_BTD = x_BTD + nn.Embed(cfg.block_size, cfg.n_embd, embedding_init=embed_init,
                                     name="wpe")(pos_BT)
        if cfg.digit_pos_max:
            digit_tokens_BT, run_B, line_B, offset_B = tokens_BT, None, None, None
            segment_B, seg_line_BT, read_B = None, None, None
            if cache is not None:  # left padding is never part of a number
                digit_tokens_BT = jnp.where(col_BT >= cache.start_B[:, None], tokens_BT, -1)
                run_B, line_B = cache.digit_run_B, cache.digit_line_B
                segment_B, read_B = cache.digit_segment_B, cache.digit_read_B
            if cfg.line_segment_max:  # before run_B and line_B move on to the last column
                S = cfg.line_segment_max
                segment_BT, seg_line_BT, segment_B = segment_indices(
                    digit_tokens_BT, cfg.digit_ids, cfg.newline_ids, cfg.doc_sep_id, line_B,
                    segment_B, None if run_B is None else run_B > 0,
                )
                wse = nn.Embed(2 * S, cfg.n_embd, embedding_init=embed_init, name="wse")
                x_BTD = x_BTD + wse(jnp.minimum(segment_BT, S - 1) + S * (seg_line_BT > 0))
            if cfg.digit_run_start:  # also before run_B moves on: a decode continues its run
                mark_BT = run_marks(digit_tokens_BT, cfg.digit_ids, run_B)
                wdr = nn.Embed(2, cfg.n_embd, embedding_init=embed_init, name="wdr")
                x_BTD = x_BTD + jnp.where((mark_BT > 0)[..., None], wdr(mark_BT - 1), 0)
            if not deterministic and cfg.digit_pos_offset_max:
                offset_B = jax.random.randint(
                    self.make_rng("digits"), (tokens_BT.shape[0],), 0, cfg.digit_pos_offset_max
                )
            left_BT = None  # before run_B moves on to the last column
            if cfg.digit_pos_from_left:
                left_BT, _ = digit_indices(digit_tokens_BT, cfg.digit_ids, run_B, offset_B)
            if cfg.digit_pos_scheme == "coupled":
                index_BT, line_B, run_B, read_B = coupled_indices(
                    digit_tokens_BT, cfg.digit_ids, cfg.newline_ids, cfg.doc_sep_id, line_B,
                    run_B, offset_B, line_BT=seg_line_BT, left_op_ids=cfg.left_op_ids,
                    answer_ids=cfg.answer_mark_ids, read_B=read_B,
                    left_read_shift=cfg.left_read_shift,
                )
            else:
                index_BT, run_B = digit_indices(digit_tokens_BT, cfg.digit_ids, run_B, offset_B)
            if not deterministic and cfg.digit_pos_doc_block and cache is None:
                width = cfg.digit_pos_doc_block
                span_BT = index_BT if left_BT is None else jnp.maximum(index_BT, left_BT)
                offset_BT = document_block_offsets(  # one offset per document
                    self.make_rng("digits"), tokens_BT, span_BT, cfg.doc_sep_id, width,
                    cfg.digit_pos_max // width, cfg.digit_pos_doc_start,
                )
                index_BT = jnp.where(index_BT > 0, index_BT + offset_BT, 0)
                if left_BT is not None:
                    left_BT = jnp.where(left_BT > 0, left_BT + offset_BT, 0)
            for name, ids_BT in (("wde", index_BT), ("wdl", left_BT)):
                if ids_BT is None:
                    continue
                table = nn.Embed(cfg.digit_pos_max, cfg.n_embd, embedding_init=embed_init,
                                 name=name)
                row_BT = jnp.clip(ids_BT - 1, 0, cfg.digit_pos_max - 1)
                x_BTD = x_BTD + jnp.where((ids_BT > 0)[..., None], table(row_BT), 0)
            if cache is not None:
                cache = cache.replace(
                    digit_run_B=run_B, digit_line_B=line_B,
                    digit_segment_B=segment_B, digit_read_B=read_B,
                )
        x_BTD = nn.Dropout(cfg.dropout)(x_BTD, deterministic=deterministic)

        if cache is None:
            block_cls = nn.remat(Block, static_argnums=(2,)) if cfg.remat else Block
            for i in range(cfg.n_layer):
                block = block_cls(cfg, cfg.is_attention(i), name=f"h_{i}")
                x_BTD = block(x_BTD, deterministic, doc_mask_B1TT, pos_BT, reset_BT)
        else:
            k_LBHSK, v_LBHSK, states = cache.k_LBHSK, cache.v_LBHSK, cache.mixer
            for i in range(cfg.n_layer):
                attention = cfg.is_attention(i)
                j = (cfg.attention_layers if attention else cfg.mixer_layers).index(i)
                block = Block(cfg, attention, name=f"h_{i}")
                x_BTD, carry = block(
                    x_BTD, deterministic, pos_BT=pos_BT, reset_BT=reset_BT, cache=cache, layer=j
                )
                if attention:  # only the new columns: in a decode loop XLA updates them in place
                    (k_BTHK, v_BTHK), dtype = carry, k_LBHSK.dtype
                    at = (j, 0, 0, cache.index, 0)
                    k_LBHSK = jax.lax.dynamic_update_slice(
                        k_LBHSK, k_BTHK.transpose(0, 2, 1, 3)[None].astype(dtype), at
                    )
                    v_LBHSK = jax.lax.dynamic_update_slice(
                        v_LBHSK, v_BTHK.transpose(0, 2, 1, 3)[None].astype(dtype), at
                    )
                else:
                    states = jax.tree.map(lambda s, new, j=j: s.at[j].set(new), states, carry)
            cache = cache.replace(
                k_LBHSK=k_LBHSK, v_LBHSK=v_LBHSK, mixer=states, index=cache.index + T
            )
        x_BTD = norm(cfg, "ln_f")(x_BTD)
        if return_hidden:
            if cache is not None:
                raise ValueError("return_hidden is for training and evaluation, not decoding")
            return x_BTD

        logits_BTV = head_logits(x_BTD, head_VD, cfg.vocab_size, cfg.dtype, cfg.logit_softcap)
        return logits_BTV if cache is None else (logits_BTV, cache)


def head_weight(params: Any, config: GPTConfig) -> jax.Array:
    """The (V, D) head matrix: the token table when tied, else its own `lm_head`."""
    return params["wte"]["embedding"] if config.tie_embeddings else params["lm_head"]


def document_positions_and_mask(
    tokens_BT: jax.Array, sep_id: int
) -> tuple[jax.Array, jax.Array]:
    """Positions counted from each token's document start, and the causal same-document mask.

    A document starts at each `sep_id` token (tokens before the first one form document 0), so the
    separator itself is at position 0, as at the start of an inference prompt.
    """
    T = tokens_BT.shape[1]
    t_T = jnp.arange(T)
    is_sep_BT = tokens_BT == sep_id
    start_BT = jax.lax.cummax(jnp.where(is_sep_BT, t_T[None], 0), axis=1)
    doc_BT = jnp.cumsum(is_sep_BT, axis=1)
    same_doc_BTT = doc_BT[:, :, None] == doc_BT[:, None, :]
    causal_TT = t_T[:, None] >= t_T[None, :]
    return t_T[None] - start_BT, (same_doc_BTT & causal_TT[None])[:, None]


def head_matmul(x_BTD: jax.Array, w_VD: jax.Array, dtype) -> jax.Array:
    """x @ w.T multiplied in `dtype`, accumulated in float32 (the tied or untied head)."""
    return jnp.einsum(
        "btd,vd->btv", x_BTD.astype(dtype), w_VD.astype(dtype), preferred_element_type=jnp.float32
    )


def head_logits(
    x_BTD: jax.Array, w_VD: jax.Array, vocab_size: int, dtype, softcap: float = 0.0
) -> jax.Array:
    """The head's logits: soft-capped to (-c, c) when `softcap` = c > 0, padded vocabulary entries
    -inf. The model's head and the fused loss (`loss.py`) both use it."""
    logits_BTV = head_matmul(x_BTD, w_VD, dtype)
    if softcap:
        logits_BTV = softcap * jnp.tanh(logits_BTV / softcap)
    return mask_padded_logits(logits_BTV, vocab_size)


def mask_padded_logits(logits_BTV: jax.Array, vocab_size: int) -> jax.Array:
    if logits_BTV.shape[-1] == vocab_size:  # nothing padded: skip a pass over B x T x V
        return logits_BTV
    is_real_V = jnp.arange(logits_BTV.shape[-1]) < vocab_size
    return jnp.where(is_real_V, logits_BTV, -jnp.inf)


def param_shapes(config: GPTConfig) -> Any:
    """Parameter shapes without allocating them (for counting and sharding plans)."""
    model = GPT(config)
    dummy_BT = jnp.zeros((1, 1), jnp.int32)
    return jax.eval_shape(lambda: model.init(jax.random.key(0), dummy_BT))["params"]


def count_params(config: GPTConfig, non_embedding: bool = False) -> int:
    """Parameters as GPT-2 counts them: the tied head once, padded vocabulary rows not at all.

    `non_embedding=True` leaves out the lookup tables, keeping every matrix that is multiplied
    (nanoGPT's convention for FLOPs): the position table always, the token table too when the head
    is untied (the tied table is also the head's matmul, so it stays).
    """
    n = sum(leaf.size for leaf in jax.tree.leaves(param_shapes(config)))
    heads = 1 if config.tie_embeddings else 2
    n -= heads * (config.padded_vocab_size - config.vocab_size) * config.n_embd
    if non_embedding and config.pos_emb == "learned":
        n -= config.block_size * config.n_embd
    if non_embedding:
        tables = 1 + config.digit_pos_from_left  # wde, and wdl
        rows = tables * config.digit_pos_max + 2 * config.line_segment_max
        n -= (rows + 2 * config.digit_run_start) * config.n_embd
    if non_embedding and not config.tie_embeddings:
        n -= config.vocab_size * config.n_embd
    return n
