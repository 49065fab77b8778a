"""Digit positions (Abacus embeddings, McLeish et al. 2024): where a digit sits within its number.

A learned absolute position ties each arithmetic step to a column index it saw in training, so a
model trained on 10-digit numbers has nothing to say about the 11th column. Abacus gives every
digit token one more embedding: its 1-based index within its run of consecutive digit tokens (the
number it belongs to), whatever its position in the text. Digits with the same index in two
operands share that embedding, so "the i-th digit of the other number" is one attention lookup
that is the same for every i. Training adds one random offset k in [0, offset_max) per sequence to
every index, so the embeddings of indices beyond the trained lengths are trained too (as the same
relative pattern); evaluation uses k = 0.

Which token ids are digits comes from the tokenizer (`digit_token_ids`: ids that decode to a single
ASCII digit, for the byte tokenizer and BPE alike) and lives in GPTConfig, so a checkpoint's model
config is all that generation needs. The index is a running count, so decoding with a KV cache
carries one integer per row (the length of the digit run the last token ended) and never looks
back.

The "coupled" scheme (position coupling, Cho et al. 2024, as a rule over the text) is what
extends worked solutions to longer numbers. Abacus indices count from a number's first digit, so
in `347+285` the units share no index with the step line that adds them, and that step's lookup
("the digit w columns back") depends on the length. Coupled ids give every token the column it
belongs to: digits of the prompt line are indexed from the number's right end (units = 1), and
every later line L (counted from the document's start; a newline opens the next line) gets id L,
its digit runs counting down from L + 1 (L+1, L, ...; never below 1). A solution written one line
per column, least significant first, then has step line s sharing id s with the prompt digits it
reads, and the answer line, most significant first, counting down to the step lines it copies
(the answer digit of column m has id m + 1, step line m's units digit id m): every lookup is
"same id" or a fixed shift of it, for every length. The prompt is given whole, so its right-end
indices are exact; generated lines use only what precedes them, so decoding carries the line
count and the digit run (a prompt number split across prefill chunks is indexed per chunk).
Long division reads its dividend from the left, so its documents can be "left-read"
(`coupled_indices`' `left_op_ids`); decoding then also carries whether the document is one and
whether the last token is in its answer's quotient (a prompt line split across prefill chunks
before its `/` is read from the right up to the split; with `left_read_shift` the dividend's ids
also need the divisor's length, so a prefill must hold the prompt line through its divisor).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

DIGITS = frozenset("0123456789")
SCHEMES = ("abacus", "coupled")


def digit_token_ids(tokenizer) -> tuple[int, ...]:
    """The ids whose decoded text is exactly one ASCII digit, ascending.

    A BPE token such as "12" or " 3" is not one of them: its digits are not one index each, so it
    gets no digit position (the byte tokenizer has exactly the ten ids 48..57).
    """
    return _ids_decoding_to(tokenizer, DIGITS)


def newline_token_ids(tokenizer) -> tuple[int, ...]:
    """The ids whose decoded text is exactly one newline: the line breaks "coupled" ids count."""
    return _ids_decoding_to(tokenizer, {"\n"})


def division_token_ids(tokenizer) -> tuple[int, ...]:
    """The ids that decode to exactly `/`: the operator of the documents coupled ids read from the
    left (`coupled_indices`' `left_op_ids`)."""
    return _ids_decoding_to(tokenizer, {"/"})


def answer_mark_token_ids(tokenizer) -> tuple[int, ...]:
    """The ids that decode to exactly `:`, which opens the answer (`A:<answer>`): the quotient
    after it is what a left-read document indexes from its left end."""
    return _ids_decoding_to(tokenizer, {":"})


def _ids_decoding_to(tokenizer, texts) -> tuple[int, ...]:
    eot = getattr(tokenizer, "eot_id", None)
    return tuple(
        i for i in range(tokenizer.vocab_size) if i != eot and tokenizer.decode([i]) in texts
    )


def digit_indices(
    tokens_BT: jax.Array,
    digit_ids: Sequence[int],
    run_B: jax.Array | None = None,
    offset_B: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """(index_BT, run_B): each digit token's 1-based index within its run of digits plus the row's
    `offset_B` (training's random shift, (B,) or per token (B, T); default 0), 0 for every other
    token; and the unshifted run length at the last column (0 when it is not a digit).

    `run_B` is the run length that ends just before column 0 (a KV-cache decode's state; default
    0): a digit at column 0 then continues that run, so decoding token by token gives the indices
    the whole sequence gives at once.
    """
    B, T = tokens_BT.shape
    is_digit_BT = jnp.isin(tokens_BT, jnp.asarray(digit_ids, tokens_BT.dtype))
    t_T = jnp.arange(T, dtype=jnp.int32)
    before_B = -1 - (jnp.zeros((B,), jnp.int32) if run_B is None else run_B.astype(jnp.int32))
    # The column of the last non-digit at or before each column (a run starts after it).
    last_non_BT = jax.lax.cummax(
        jnp.maximum(jnp.where(is_digit_BT, -(1 << 30), t_T[None]), before_B[:, None]), axis=1
    )
    run_BT = jnp.where(is_digit_BT, t_T[None] - last_non_BT, 0)
    return jnp.where(is_digit_BT, run_BT + _per_token(offset_B), 0), run_BT[:, -1]


def run_marks(
    tokens_BT: jax.Array, digit_ids: Sequence[int], run_B: jax.Array | None = None
) -> jax.Array:
    """(B, T) int32: 1 for a digit that starts its run of digits, 2 for a later digit of a run,
    0 for every other token; `run_B` continues a decode as in `digit_indices`.

    Length-blind, unlike a digit's index from its number's left end: in `7+5+0=12` the carry `1`
    is 1 and the units `2` is 2 at every length, which is what tells the two result digits of a
    step line apart when they share a coupled id and a segment with a neighbour line's.
    """
    index_BT, _ = digit_indices(tokens_BT, digit_ids, run_B)
    return jnp.minimum(index_BT, 2)


def coupled_indices(
    tokens_BT: jax.Array,
    digit_ids: Sequence[int],
    newline_ids: Sequence[int],
    doc_sep_id: int,
    line_B: jax.Array | None = None,
    run_B: jax.Array | None = None,
    offset_B: jax.Array | None = None,
    line_BT: jax.Array | None = None,
    left_op_ids: Sequence[int] = (),
    answer_ids: Sequence[int] = (),
    read_B: jax.Array | None = None,
    left_read_shift: bool = False,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """(index_BT, line_B, run_B, read_B): each token's coupled id (module docstring) plus the
    row's `offset_B` where it is > 0; the line count, the digit run and the reading state at the
    last column.

    `line_B`, `run_B` and `read_B` continue a decode (the line number, digit run and reading
    state that end just before column 0; default 0). A `doc_sep_id` token starts a new document
    at line 0; tokens < 0 (left padding) are nothing. `line_BT`: the tokens' `line_numbers` when
    the caller has them already.

    Left-read documents (`left_op_ids`, long division's `/`): a document whose prompt line holds
    one of these operators reads its prompt from the left, so its prompt digits are indexed from
    their number's left end, and the digit run right after an `answer_ids` token (the quotient
    after `A:`) from its own left end too. Why: long division's step line i brings down the
    dividend's digit i from the left, and the answer's digit i is step line i's quotient digit
    (id i + 1); indexed from the right, both lookups depend on the dividend's length, the
    suspected reason 12-digit division by one digit stayed at 0 while the trained lengths
    reached 0.88-0.92 (BENCHMARKS.md). With these ids both are "same id" or a fixed shift at
    every length; nothing else changes, and no other document is touched. Measured (session 29,
    two seeds): it removes early wrong lines at 12 digits but not the break at the edge of the
    trained line counts, so 12-digit division stays at 0. `read_B` packs what a
    decode carries: bit 0, the document is left-read; bit 1, the last token is an answer mark or
    a digit of the run after one.

    `left_read_shift` moves those ids so that each lookup is "same id" from the token that
    predicts the digit looked up, not a shift of one or two ids: the dividend's digit j gets
    j + 2 - w (w the divisor's length: step line i's partial dividend is w + 1 digits counting
    down from i + 1, so its digit w, which predicts the digit brought down, has id i + 2 - w;
    never below 1, so divisors of 3 or more digits share id 1 among the first dividend digits),
    and the answer's quotient digit k gets k + 2 (for k >= 2 its digit k - 1, which predicts
    digit k, then shares id k + 1 with step line k's quotient digit; digit 1 follows the colon,
    as before). Why: a probe of the session-29 model (docs/lab-notes.md, "Is the left-read edge
    error an id confusion?") found that at step line 6, the last a 6-digit training dividend
    has, it reads the dividend digit that shares the predicting token's id (digit 7) instead of
    the one an id below (digit 6), where the shorter lines probed rank them the other way: the
    learned shift held on lines where training had both digits to tell apart, not past them.
    A prompt line split across prefill chunks after its `/` keeps the divisor's digits from the left
    (the operator was carried), but the dividend's ids in an earlier chunk were computed
    without the divisor's length: prefill the prompt line through its divisor.
    """
    B = tokens_BT.shape[0]
    is_digit_BT = jnp.isin(tokens_BT, jnp.asarray(digit_ids, tokens_BT.dtype))
    from_left_BT, run_out_B = digit_indices(tokens_BT, digit_ids, run_B)
    from_right_BT = digit_indices(tokens_BT[:, ::-1], digit_ids)[0][:, ::-1]
    if line_BT is None:
        line_BT = line_numbers(tokens_BT, newline_ids, doc_sep_id, line_B)
    in_line_BT = jnp.where(is_digit_BT, jnp.maximum(line_BT + 2 - from_left_BT, 1), line_BT)
    prompt_BT = from_right_BT
    read_out_B = jnp.zeros((B,), jnp.int32)
    if left_op_ids:
        read0_B = jnp.zeros((B,), jnp.int32) if read_B is None else read_B.astype(jnp.int32)
        # left-read documents: any left operator on the document's line 0, the prompt included
        # before the operator (the prompt is given whole, as for its right-end indices)
        doc_BT = document_numbers(tokens_BT, doc_sep_id)
        is_op_BT = jnp.isin(tokens_BT, jnp.asarray(left_op_ids, tokens_BT.dtype)) & (line_BT == 0)
        op_BD = document_max(is_op_BT, doc_BT).at[:, 0].max((read0_B & 1) > 0)  # 0: a decode's
        left_read_BT = jnp.take_along_axis(op_BD, doc_BT, axis=1)
        # the digit run right after an answer mark: the column before the run's first digit
        is_mark_BT = jnp.isin(tokens_BT, jnp.asarray(answer_ids, tokens_BT.dtype))
        before_BT = jnp.arange(tokens_BT.shape[1])[None] - from_left_BT  # < 0: an earlier chunk
        marked_BT = jnp.where(
            before_BT >= 0,
            jnp.take_along_axis(is_mark_BT, jnp.maximum(before_BT, 0), axis=1),
            ((read0_B & 2) > 0)[:, None],
        )
        answer_BT = is_digit_BT & marked_BT & (line_BT > 0) & left_read_BT
        read_left_BT = from_left_BT
        if left_read_shift:
            col_BT = jnp.arange(tokens_BT.shape[1])[None]
            op_col_BT = jnp.take_along_axis(  # 1 + the operator's column, 0 before it is seen
                document_max(jnp.where(is_op_BT, col_BT + 1, 0), doc_BT), doc_BT, axis=1)
            after_op_BT = jnp.where(  # or the operator came in an earlier chunk
                op_col_BT > 0, col_BT >= op_col_BT, (doc_BT == 0) & ((read0_B & 1) > 0)[:, None])
            divisor_BT = is_digit_BT & (line_BT == 0) & after_op_BT
            width_BT = jnp.take_along_axis(
                document_max(jnp.where(divisor_BT, from_left_BT, 0), doc_BT), doc_BT, axis=1)
            read_left_BT = jnp.where(
                is_digit_BT & ~after_op_BT, jnp.maximum(from_left_BT + 2 - width_BT, 1),
                from_left_BT)
        in_line_BT = jnp.where(answer_BT, from_left_BT + (2 if left_read_shift else 0), in_line_BT)
        prompt_BT = jnp.where(left_read_BT, read_left_BT, from_right_BT)
        mark_out_B = is_mark_BT[:, -1] | (is_digit_BT[:, -1] & marked_BT[:, -1])
        read_out_B = left_read_BT[:, -1].astype(jnp.int32) + 2 * mark_out_B.astype(jnp.int32)
    index_BT = jnp.where(line_BT == 0, jnp.where(is_digit_BT, prompt_BT, 0), in_line_BT)
    if offset_B is not None:
        index_BT = jnp.where(index_BT > 0, index_BT + _per_token(offset_B), 0)
    return index_BT, line_BT[:, -1], run_out_B, read_out_B


def _per_token(offset: jax.Array | None) -> jax.Array | int:
    """A row's offset (B,) or a per-token one (B, T), broadcast over the columns."""
    if offset is None:
        return 0
    return offset if offset.ndim == 2 else offset[:, None]


def document_numbers(tokens_BT: jax.Array, doc_sep_id: int) -> jax.Array:
    """(B, T) int32: how many `doc_sep_id` tokens each column has seen, itself included (0 for
    the columns before the first; none when doc_sep_id < 0), so at most T."""
    is_sep_BT = (tokens_BT == doc_sep_id) & (doc_sep_id >= 0)
    return jnp.cumsum(is_sep_BT, axis=1, dtype=jnp.int32)


def document_max(values_BT: jax.Array, doc_BT: jax.Array) -> jax.Array:
    """(B, T + 1): the largest of each document's `values_BT` (`doc_BT` its `document_numbers`),
    the values' zero for a document number no column has; read back per column with
    `jnp.take_along_axis(result, doc_BT, axis=1)`."""
    B, T = values_BT.shape
    rows_BT = jnp.broadcast_to(jnp.arange(B)[:, None], (B, T))
    return jnp.zeros((B, T + 1), values_BT.dtype).at[rows_BT, doc_BT].max(values_BT)


DOC_STARTS = ("half", "fit")  # how document_block_offsets draws a document's start in its block


def document_block_offsets(
    key: jax.Array, tokens_BT: jax.Array, index_BT: jax.Array, doc_sep_id: int, width: int,
    n_blocks: int, starts: str = "half",
) -> jax.Array:
    """(B, T) training offsets: each document of a packed row gets its own block of `width` ids
    (a random permutation of `n_blocks` blocks per row; documents past `n_blocks` reuse them) and
    a random start in it, so up to `n_blocks` documents of a row never share an id.

    `starts="half"`: uniform in the block's first half, whatever the document, so a document whose
    ids (`index_BT`, before any offset) span fewer than width / 2 stays in its block; ids above
    width / 2 + the trained span are never drawn, and evaluation (offset 0) reads block 0's high
    ids for longer numbers, so the width must exceed twice the longest evaluated id. `"fit"`:
    uniform over the starts that keep the document's ids in its block (0 .. width - span), so
    every id of every block is drawn. Measured on + and - (one seed each, BENCHMARKS.md): "half"
    at width 32 reached 0.80 at 20 digits, "fit" 0.

    Why blocks: one offset per row (and document masking) means a lookup is only ever contrasted
    with ids of its own problem, at most ~11 apart when training stops at 10 digits; at 14 digits
    the first step lines read blends of columns 12 ids away (BENCHMARKS.md). Documents that see
    each other under distinct blocks contrast every id with ids at every distance.
    """
    if starts not in DOC_STARTS:
        raise ValueError(f"starts={starts!r}: use one of {DOC_STARTS}")
    B, T = tokens_BT.shape
    k_perm, k_start = jax.random.split(key)
    doc_BT = document_numbers(tokens_BT, doc_sep_id)
    block_BN = jnp.argsort(jax.random.uniform(k_perm, (B, n_blocks)), axis=1).astype(jnp.int32)
    if starts == "half":
        start_BD = jax.random.randint(k_start, (B, T + 1), 0, max(width // 2, 1))
    else:
        span_BD = document_max(index_BT.astype(jnp.int32), doc_BT)
        room_BD = jnp.maximum(width - span_BD, 0) + 1  # a longer document runs into the next block
        start_BD = jnp.floor(jax.random.uniform(k_start, (B, T + 1)) * room_BD).astype(jnp.int32)
    block_BT = jnp.take_along_axis(block_BN, doc_BT % n_blocks, axis=1)
    return width * block_BT + jnp.take_along_axis(start_BD, doc_BT, axis=1)


def line_numbers(
    tokens_BT: jax.Array, newline_ids: Sequence[int], doc_sep_id: int, line_B: jax.Array | None
) -> jax.Array:
    """Each token's line within its document: a newline opens the next line (and is its first
    token), a `doc_sep_id` token starts line 0 again; `line_B` continues a decode (default 0)."""
    is_newline_BT = jnp.isin(tokens_BT, jnp.asarray(newline_ids, tokens_BT.dtype))
    base_B = jnp.zeros(tokens_BT.shape[:1], jnp.int32) if line_B is None else line_B
    count_BT = base_B[:, None] + jnp.cumsum(is_newline_BT, axis=1, dtype=jnp.int32)
    # count_BT never decreases, so the running max of its value at separators is the last one's
    is_doc_start_BT = (tokens_BT == doc_sep_id) & (doc_sep_id >= 0)  # -1 (off) is padding's id
    at_doc_start_BT = jax.lax.cummax(jnp.where(is_doc_start_BT, count_BT, 0), axis=1)
    return count_BT - at_doc_start_BT


def segment_indices(
    tokens_BT: jax.Array,
    digit_ids: Sequence[int],
    newline_ids: Sequence[int],
    doc_sep_id: int,
    line_B: jax.Array | None = None,
    segment_B: jax.Array | None = None,
    after_digit_B: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(segment_BT, line_BT, segment_B): each token's 1-based segment within its line, its line,
    and the segment at the last column.

    A segment is a maximal run of digits or of non-digits, so `7+5+0=12` is segments 1..7 and the
    prompt `347+285` is 1, 2, 3 whatever the numbers' lengths. Why: coupled ids say which column a
    token belongs to but not which number of its line, and a model without token positions can
    only estimate that from an attention average over the line, which a longer prompt dilutes
    (the 15-digit `+++0=09` failure). The segment is bounded by the line's layout, not the length.
    Line breaks, document separators and padding (tokens < 0) are segment 0. `segment_B` and
    `after_digit_B` (whether the token before column 0 was a digit) continue a decode.
    """
    B = tokens_BT.shape[0]
    is_digit_BT = jnp.isin(tokens_BT, jnp.asarray(digit_ids, tokens_BT.dtype))
    is_break_BT = (
        jnp.isin(tokens_BT, jnp.asarray(newline_ids, tokens_BT.dtype))
        | (tokens_BT < 0)
        | ((tokens_BT == doc_sep_id) & (doc_sep_id >= 0))
    )
    seg0_B = jnp.zeros((B,), jnp.int32) if segment_B is None else segment_B.astype(jnp.int32)
    digit0_B = jnp.zeros((B,), bool) if after_digit_B is None else after_digit_B
    prev_digit_BT = jnp.concatenate([digit0_B[:, None], is_digit_BT[:, :-1]], axis=1)
    prev_break_BT = jnp.concatenate([(seg0_B == 0)[:, None], is_break_BT[:, :-1]], axis=1)
    starts_BT = ~is_break_BT & (prev_break_BT | (is_digit_BT != prev_digit_BT))
    count_BT = seg0_B[:, None] + jnp.cumsum(starts_BT, axis=1, dtype=jnp.int32)
    at_break_BT = jax.lax.cummax(jnp.where(is_break_BT, count_BT, 0), axis=1)
    segment_BT = jnp.where(is_break_BT, 0, count_BT - at_break_BT)
    line_BT = line_numbers(tokens_BT, newline_ids, doc_sep_id, line_B)
    return segment_BT, line_BT, segment_BT[:, -1]
