"""Calculator arithmetic as text: problems, worked solutions, the answer parser, a step verifier.

A problem is one line with its operands zero-padded to a fixed width (`347+085`); its worked
solution is one fixed-width line per elementary step, each an exact equation about one column that
restates the digits it uses (`7+5+0=12`: digits plus carry in, the tens digit being the carry out),
least significant column first, then the answer line, also zero-padded (`A:0432`). Because every
width is fixed, each digit a step needs sits at a constant offset from the start of the problem:
a small byte-level transformer with learned absolute positions learns that lookup in minutes,
where with unpadded operands it had to find "the i-th digit from the right" of a number of any
length (measured: 0% after 600 steps; see BENCHMARKS.md). Widths are at least
`MIN_WIDTH[op]` and grow for longer numbers. The `steps=False` variant writes the answer line alone.

    add  347+085  7+5+0=12 / 4+8+1=13 / 3+0+1=04 / A:0432    (least significant column first)
    sub  532-285  12-5-0=7 / 13-8-1=4 / 05-2-1=2 / A:247     (a >= b; the leading digit of a
                                                              step is the borrow out)
    mul  47*85    7*5+0=35 / 4*5+3=23 / =235 / 7*8+0=56 / 4*8+5=37 / =376 /
                  5+0+0=05 / 3+6+0=09 / 2+7+0=09 / 0+3+0=03 / A:3995
                  (a partial product `=376` is written unshifted, a*digit in width(a)+1 digits;
                  adding it shifted to the running total is written column by column)
    div  847/6    08/6=1r2 / 24/6=4r0 / 07/6=1r1 / A:141r1   (quotient r remainder)

That is the "classic" layout. The "aligned" one (`LAYOUTS`) writes x one line per product column,
three equations to a line (`7*5+0=35,7*8+0=56,5+0+0=05`), and zero-pads the quotient to the
dividend's width (`A:007r5`), so that each step's lookups are the same at every length. The
"table" one is "aligned" with / first writing its divisor's multiples, one per line (`6*1=06` ...
`6*9=54`), so that a quotient digit is a comparison with numbers in the context. The "trial" one
is "aligned" with each step of / by two or more digits preceded, on its line, by the schoolbook
estimate of its quotient digit and the products that correct it
(`43/5=8r3,56*8=448,56*7=392,434/56=7r42`), and "trial_sub" writes each trial product's
difference from the partial dividend after it, column by column, as - does
(`56*7=392,04-2-0=2,13-9-0=4,04-3-1=0`); "trial_rem" writes only the fitting product's;
"trial_pad" is "trial" with every step's remainder as wide as the divisor (`179/19=9r08`).

Solutions are checked with exact integer arithmetic by `checker.verify_solution`, which is both
the test of the generator and the inference-time verifier that filters sampled solutions.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterable, Iterator, Sequence

OPS = ("+", "-", "*", "/")
OP_NAMES = {"+": "add", "-": "sub", "*": "mul", "/": "div"}
ANSWER_PREFIX = "A:"
# Smallest operand width written per operation (zero-padded up to it): the training range.
MIN_WIDTH = {"+": 3, "-": 3, "*": 2, "/": 3}


@dataclasses.dataclass(frozen=True, order=True)
class Problem:
    op: str
    a: int
    b: int

    def __post_init__(self):
        if self.op not in OPS:
            raise ValueError(f"unknown operation {self.op!r}; use one of {OPS}")
        if self.a < 0 or self.b < 0:
            raise ValueError(f"operands must be non-negative, got {self.a} and {self.b}")
        if self.op == "-" and self.a < self.b:
            raise ValueError(f"subtraction needs a >= b, got {self.a}-{self.b}")
        if self.op == "/" and self.b == 0:
            raise ValueError("division by zero")

    @property
    def widths(self) -> tuple[int, int]:
        """Written widths of a and b: both operands share one width for + and -; the divisor is
        written as is."""
        da, db = len(str(self.a)), len(str(self.b))
        lo = MIN_WIDTH[self.op]
        if self.op in "+-":
            w = max(lo, da, db)
            return w, w
        if self.op == "*":
            return max(lo, da), max(lo, db)
        return max(lo, da), db

    @property
    def prompt(self) -> str:
        """What the model is given: the problem line (operands zero-padded), newline included."""
        wa, wb = self.widths
        return f"{self.a:0{wa}d}{self.op}{self.b:0{wb}d}\n"

    @property
    def written_answer(self) -> str:
        """The answer as the solution writes it: zero-padded to a fixed width for + and *."""
        wa, wb = self.widths
        if self.op == "+":
            return f"{self.a + self.b:0{wa + 1}d}"
        if self.op == "-":
            return f"{self.a - self.b:0{wa}d}"
        if self.op == "*":
            return f"{self.a * self.b:0{wa + wb}d}"
        return self.answer

    @property
    def answer(self) -> str:
        if self.op == "+":
            return str(self.a + self.b)
        if self.op == "-":
            return str(self.a - self.b)
        if self.op == "*":
            return str(self.a * self.b)
        q, r = divmod(self.a, self.b)
        return f"{q}r{r}"

    @property
    def level(self) -> str:
        """Difficulty by digit count: `3` for 3-digit add/sub, `2x2` for mul, `3/1` for div."""
        da, db = len(str(self.a)), len(str(self.b))
        return _level(self.op, max(da, db) if self.op in "+-" else da, db)

    def to_json(self) -> dict:
        return {
            "op": self.op,
            "a": self.a,
            "b": self.b,
            "level": self.level,
            "prompt": self.prompt,
            "answer": self.answer,
        }

    @classmethod
    def from_json(cls, record: dict) -> Problem:
        return cls(record["op"], int(record["a"]), int(record["b"]))


# --- worked solutions --------------------------------------------------------------------------


def digits_lsf(n: int, width: int) -> list[int]:
    """Digits least significant first, zero-padded to `width`."""
    return [int(c) for c in reversed(str(n).rjust(width, "0"))]


def _add_lines(a: int, b: int, width: int) -> list[str]:
    carry, lines = 0, []
    for x, y in zip(digits_lsf(a, width), digits_lsf(b, width), strict=True):
        s = x + y + carry
        lines.append(f"{x}+{y}+{carry}={s:02d}")
        carry = s // 10
    return lines


def _sub_lines(a: int, b: int, width: int) -> list[str]:
    borrow, lines = 0, []
    for x, y in zip(digits_lsf(a, width), digits_lsf(b, width), strict=True):
        borrow_out = int(x - y - borrow < 0)
        lines.append(f"{borrow_out}{x}-{y}-{borrow}={10 * borrow_out + x - y - borrow}")
        borrow = borrow_out
    return lines


def _mul_lines(a: int, b: int, wa: int, wb: int) -> list[str]:
    """Digit products per digit of b, its partial product, then the running total's addition
    written over a fixed number of columns (wa + j + 1 for digit j: the total always fits)."""
    lines: list[str] = []
    total = 0
    for j, y in enumerate(digits_lsf(b, wb)):
        carry = 0
        for x in digits_lsf(a, wa):
            v = x * y + carry
            lines.append(f"{x}*{y}+{carry}={v:02d}")
            carry = v // 10
        partial = a * y
        lines.append(f"={partial:0{wa + 1}d}")
        if j > 0:
            width = wa + j + 1
            lines.extend(_add_lines(total, partial * 10**j, width))
            if j < wb - 1:
                lines.append(f"={total + partial * 10**j:0{width}d}")
        total += partial * 10**j
    if wb == 1:
        lines.pop()  # the only partial product is the answer
    return lines


def _mul_column_lines(a: int, b: int, wa: int, wb: int) -> list[str]:
    """One line per column of the product, least significant first: the column's digit of a
    times each digit of b (each with its own carry chain, a's width padded with zeros until the
    carries are spent), then the column sum of the shifted products' units plus its carry:
    `7*5+0=35,7*8+0=56,5+0+0=05`.

    The "aligned" layout's x. Why: "classic" writes b's digits one after another, so the second
    partial product's line s sits w + 1 lines after the first's and reads a's digit s: a lookup
    whose distance grows with the length. Here line s reads a's digit s, the units of line s - j
    and its own carries, the same relation at every length, which coupled digit ids
    (docs/arithmetic.md) make one lookup.
    Every line is still one-digit products and small sums.
    """
    b_digits = digits_lsf(b, wb)
    carries, units, add_carry, lines = [0] * wb, [], 0, []
    sum_width = column_sum_width(wb)
    for s, x in enumerate(digits_lsf(a, wa + wb)):
        parts, row = [], []
        for j, y in enumerate(b_digits):
            v = x * y + carries[j]
            parts.append(f"{x}*{y}+{carries[j]}={v:02d}")
            carries[j] = v // 10
            row.append(v % 10)
        units.append(row)
        terms = [units[s - j][j] if s >= j else 0 for j in range(wb)]
        v = sum(terms) + add_carry
        parts.append("+".join(map(str, terms)) + f"+{add_carry}={v:0{sum_width}d}")
        add_carry = v // 10
        lines.append(",".join(parts))
    return lines


def column_sum_width(wb: int) -> int:
    """Digits of the largest column sum of `_mul_column_lines`: wb units of 9 plus the carry."""
    carry = 0
    while (9 * wb + carry) // 10 != carry:
        carry = (9 * wb + carry) // 10
    return len(str(9 * wb + carry))


def _partial_dividend_width(b: int) -> int:
    """Digits of every partial dividend of long division by b (each is below 10 * b)."""
    return len(str(b)) + 1


def divisor_table_lines(b: int) -> list[str]:
    """The "table" layout's first lines for /: b's multiples 1..9 (`56*7=392`), each zero-padded
    to the width of a partial dividend, so that a step's quotient digit is found by comparing the
    partial dividend with nine numbers in the context, not recalled as a fact about two numbers
    (measured: two-digit quotient facts were not learned in 3,000 steps; BENCHMARKS.md)."""
    width = _partial_dividend_width(b)
    return [f"{b}*{k}={k * b:0{width}d}" for k in range(1, 10)]


def quotient_trials(cur: int, b: int, differences: str = "none") -> list[str]:
    """The "trial" layout's equations before a step's `cur/b=qrr` when b has two or more digits:
    the schoolbook estimate of the quotient digit from leading digits (`32/4=8r0`: cur's digits
    above b's last wb - 1 ones, over b's leading digit), then b times each candidate from that
    estimate (at most 9) down to the first that fits (`46*8=368,46*7=322`).

    Why: a step such as `328/46=7r6` is a fact about two numbers that 3,000 steps did not teach,
    and the divisor's table in the context was not used (BENCHMARKS.md). Here the quotient digit
    comes from a one-digit division the model already does, and each correction from a product
    it can check against cur, so no step recalls a two-digit fact.

    `differences` (`TRIAL_DIFFERENCES`): "all" (the "trial_sub" layout) writes cur minus each
    product as −'s column equations right after it (`14-8-0=6,13-4-1=8,14-4-1=9`): the last
    one's leading digit, the borrow out, says whether the product fits, and the fitting product's
    difference is the step's remainder. "fit" (the "trial_rem" layout) writes only the fitting
    product's. Why: in "trial", most wrong 4/2 steps were a right quotient digit with a wrong
    remainder (a three-digit subtraction done in one go) or trials stopped at the wrong product
    (comparing two three-digit numbers); "all" makes both one-digit column equations (measured
    worse at equal tokens; read as diluting the facts, not tested); "fit" writes only the
    remainder's columns, at about half of "all"'s extra length.
    """
    scale = 10 ** (len(str(b)) - 1)
    top, lead = cur // scale, b // scale
    width = _partial_dividend_width(b)
    # The estimate is never below the quotient digit, and the first candidate that fits is it.
    candidates = range(min(9, top // lead), cur // b - 1, -1)
    trials = [f"{top:02d}/{lead}={top // lead}r{top % lead}"]
    for k in candidates:
        trials.append(f"{b}*{k}={k * b:0{width}d}")
        if differences == "all" or (differences == "fit" and k == cur // b > 0):
            trials += _sub_lines(cur, k * b, width)
    return trials


def _div_lines(a: int, b: int, wa: int, layout: str = "aligned") -> list[str]:
    width = _partial_dividend_width(b)  # fixed-width lines
    # "trial_pad": every remainder has the divisor's width (`434/56=7r42`, `179/19=9r08`), so its
    # digit i always sits over column i of the partial dividend and the next line's partial
    # dividend (`08X`) copies it digit for digit. Why: at 4/2 the trial layout's remaining errors
    # are mostly the remainder, whose length varies with its value (the hypothesis: `9r8` and
    # `9r18` are then the same lookup at different places).
    rem_width = len(str(b)) if layout == "trial_pad" else 1
    lines, rem = [], 0
    for c in f"{a:0{wa}d}":
        cur = rem * 10 + int(c)
        q, rem = divmod(cur, b)
        step = f"{cur:0{width}d}/{b}={q}r{rem:0{rem_width}d}"
        if layout in TRIAL_LAYOUTS and b >= 10:
            step = ",".join([*quotient_trials(cur, b, TRIAL_DIFFERENCES[layout]), step])
        lines.append(step)
    return lines


# How the worked steps are laid out. "classic": x as one partial product per digit of b, then
# their column addition; the quotient as is (`847/6` -> `A:141r1`). "aligned": every line's
# lookups are the same at every length, which coupled digit ids turn into one lookup each
# (docs/arithmetic.md): x one line per product column (`_mul_column_lines`), and the quotient
# zero-padded to the dividend's width (`A:0141r1`), so the answer's i-th digit is always step
# line i's, not line i + (the number of leading zeros). "table": "aligned", with / writing its
# divisor's multiples first (`divisor_table_lines`). "trial": "aligned", with each step of / by
# two or more digits preceded, on its line, by its quotient digit's estimate and trial products
# (`quotient_trials`). "trial_sub": "trial", with the dividend minus each trial product written
# as -'s column equations after it; "trial_rem": only the fitting product's, which is the step's
# remainder; "trial_pad": "trial" with every step's remainder zero-padded to the divisor's width
# (`_div_lines`). + and - are the same in all seven.
LAYOUTS = ("classic", "aligned", "table", "trial", "trial_sub", "trial_rem", "trial_pad")
# The layouts that write `quotient_trials`, and which trial products' differences each writes.
TRIAL_DIFFERENCES = {"trial": "none", "trial_sub": "all", "trial_rem": "fit", "trial_pad": "none"}
TRIAL_LAYOUTS = tuple(TRIAL_DIFFERENCES)


def _step_lines(problem: Problem, layout: str) -> list[str]:
    (wa, wb), a, b = problem.widths, problem.a, problem.b
    if problem.op == "+":
        return _add_lines(a, b, wa)
    if problem.op == "-":
        return _sub_lines(a, b, wa)
    if problem.op == "*":
        lines = _mul_lines if layout == "classic" else _mul_column_lines
        return lines(a, b, wa, wb)
    table = divisor_table_lines(b) if layout == "table" else []
    return table + _div_lines(a, b, wa, layout)


def written_answer(problem: Problem, layout: str = "classic") -> str:
    """The answer line's text after `A:` (`Problem.written_answer`, with the aligned quotient)."""
    if layout != "classic" and problem.op == "/":
        q, r = divmod(problem.a, problem.b)
        return f"{q:0{problem.widths[0]}d}r{r}"
    return problem.written_answer


def solution(problem: Problem, steps: bool = True, layout: str = "classic") -> str:
    """The completion after the prompt: worked steps (optional) and the answer line."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r}: use one of {LAYOUTS}")
    lines = _step_lines(problem, layout) if steps else []
    answer = written_answer(problem, layout)
    return "".join(line + "\n" for line in lines) + f"{ANSWER_PREFIX}{answer}\n"


def document(problem: Problem, steps: bool = True, layout: str = "classic") -> str:
    """One training document (the tokenizer's end-of-text goes before it)."""
    return problem.prompt + solution(problem, steps, layout)


# --- problem generation ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Mixture:
    """Which problems training sees: operation weights and digit counts per operand.

    Digit counts are drawn per operand from `*_digit_weights` (index 0 = 1 digit); larger counts get
    more weight because they hold most of the procedure (carries over several columns).
    """

    # + - * /: all four calculator operations (3-digit + and -, 2-digit x, 3- and 4-digit / by
    # 1 or 2 digits). PRESETS["addsubmul"] is the earlier mix without division.
    op_weights: tuple[float, float, float, float] = (0.3, 0.3, 0.25, 0.15)
    addsub_digit_weights: tuple[float, ...] = (0.1, 0.2, 0.7)
    mul_digit_weights: tuple[float, ...] = (0.3, 0.7)
    # Digits of x's second operand; () draws it like the first.
    mul_multiplier_digit_weights: tuple[float, ...] = ()
    div_dividend_digit_weights: tuple[float, ...] = (0.1, 0.2, 0.35, 0.35)
    div_divisor_digit_weights: tuple[float, ...] = (0.6, 0.4)
    layout: str = "classic"  # LAYOUTS: how the worked steps are written

    def __post_init__(self):
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout={self.layout!r}: use one of {LAYOUTS}")
        # random.choices would fail mid-write on these (or never draw an operation)
        w = self.op_weights
        if len(w) != len(OPS) or not all(x >= 0 for x in w) or not 0 < sum(w) < float("inf"):
            raise ValueError(f"op_weights={tuple(w)}: give {len(OPS)} finite weights >= 0 for "
                             f"{' '.join(OPS)}, at least one of them > 0")

    def _weights(self, op: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
        if op in "+-":
            return self.addsub_digit_weights, self.addsub_digit_weights
        if op == "*":
            return self.mul_digit_weights, (
                self.mul_multiplier_digit_weights or self.mul_digit_weights
            )
        return self.div_dividend_digit_weights, self.div_divisor_digit_weights

    def operand_ranges(self) -> dict[str, tuple[tuple[int, int], tuple[int, int]]]:
        """Per operation with weight > 0: the (min, max) digits of a and of b training can draw."""

        def span(w: tuple[float, ...]) -> tuple[int, int]:
            drawn = [i + 1 for i, x in enumerate(w) if x > 0]
            return drawn[0], drawn[-1]

        return {
            op: (span(wa), span(wb))
            for op, weight in zip(OPS, self.op_weights, strict=True)
            if weight > 0
            for wa, wb in [self._weights(op)]
        }

    def max_digits(self) -> dict[str, int]:
        return {op: len(self._weights(op)[0]) for op in OPS}


def random_int(rng: random.Random, digits: int) -> int:
    """A uniform integer with exactly `digits` digits (0-9 for one digit)."""
    return rng.randint(0 if digits == 1 else 10 ** (digits - 1), 10**digits - 1)


def make_problem(rng: random.Random, op: str, da: int, db: int) -> Problem:
    a, b = random_int(rng, da), random_int(rng, db)
    if op == "-" and a < b:
        a, b = b, a
    if op == "/" and b == 0:
        b = rng.randint(1, 9)
    return Problem(op, a, b)


def sample_problem(rng: random.Random, mix: Mixture) -> Problem:
    op = rng.choices(OPS, weights=mix.op_weights)[0]
    wa, wb = mix._weights(op)
    da = rng.choices(range(1, len(wa) + 1), weights=wa)[0]
    db = rng.choices(range(1, len(wb) + 1), weights=wb)[0]
    return make_problem(rng, op, da, db)


def training_problems(
    seed: int, mix: Mixture, exclude: Iterable[Problem] = ()
) -> Iterator[Problem]:
    """An endless seeded stream of training problems, never one in `exclude` (the test sets)."""
    rng = random.Random(seed)
    banned = set(exclude)
    while True:
        p = sample_problem(rng, mix)
        if p not in banned:
            yield p


# Test sets: (op, digits of a, digits of b, count). "heldout" matches the training range; "long"
# uses more digits than training ever shows, to measure length generalisation.
HELDOUT_SPEC = (
    ("+", 2, 2, 100),
    ("+", 3, 3, 300),
    ("-", 2, 2, 100),
    ("-", 3, 3, 300),
    ("*", 2, 1, 100),
    ("*", 2, 2, 200),
    ("/", 3, 1, 200),
    ("/", 4, 1, 200),
    ("/", 4, 2, 200),
)
LONG_SPEC = (
    ("+", 4, 4, 100),
    ("+", 5, 5, 100),
    ("-", 4, 4, 100),
    ("*", 3, 2, 100),
    ("/", 5, 1, 100),
)


def length_specs(
    mix: Mixture, counts: tuple[int, int] = (100, 100), trained: dict[str, list[int]] | None = None
) -> tuple[tuple, tuple]:
    """(at trained lengths, at 2x and 3x the longest trained length) for every operation in `mix`.

    The long operand (a; x's first factor, the dividend) is the one that grows; the second keeps
    each length it was trained on (+ and - grow both). `trained` adds lengths to test inside the
    trained range (default: the longest only).
    """
    heldout, long = [], []
    for op, ((_, a_max), (b_min, b_max)) in mix.operand_ranges().items():
        bs = [None] if op in "+-" else range(b_min, b_max + 1)
        for da in sorted({*(trained or {}).get(op, []), a_max}):
            heldout += [(op, da, da if b is None else b, counts[0]) for b in bs]
        for da in (2 * a_max, 3 * a_max):
            long += [(op, da, da if b is None else b, counts[1]) for b in bs]
    return tuple(heldout), tuple(long)


# Named training mixtures (`scripts/make_arithmetic_data.py --preset NAME`) and their test sets.
# "default": all four operations at small sizes; "addsubmul": the mixture of the first 14-minute
# result (no division); "long": operands up to 10 digits for + and -, 5x2 for x, 6/2 for /, tested
# at the trained lengths and at 2x and 3x the longest; "long_addsub", "long_mul", "long_div":
# its + and - alone, its x alone, its / alone (each mechanism at a fraction of the cost);
# "long_div_table", "long_div_trial", "long_div_trial_sub", "long_div_trial_rem",
# "long_div_trial_pad": "long_div" in those layouts.
_LONG_MIX = Mixture(
    op_weights=(0.25, 0.25, 0.25, 0.25),
    addsub_digit_weights=tuple(float(i) for i in range(1, 11)),
    mul_digit_weights=(1.0, 1.0, 2.0, 2.0, 2.0),
    mul_multiplier_digit_weights=(1.0, 2.0),
    div_dividend_digit_weights=(1.0, 1.0, 2.0, 2.0, 2.0, 2.0),
    div_divisor_digit_weights=(1.0, 1.0),
    layout="aligned",  # x and / written so that their lines extend to longer numbers
)
# + and - alone at the long preset's lengths: the length-generalisation mechanism on its own, at
# a fraction of the headline run's cost.
_LONG_ADDSUB_MIX = dataclasses.replace(_LONG_MIX, op_weights=(0.5, 0.5, 0.0, 0.0))
# x alone and / alone, likewise: do the aligned layout's x (5x2 -> 10x2, 15x2) and / (6/2 ->
# 12/2, 18/2) extend?
_LONG_MUL_MIX = dataclasses.replace(_LONG_MIX, op_weights=(0.0, 0.0, 1.0, 0.0))
_LONG_DIV_MIX = dataclasses.replace(_LONG_MIX, op_weights=(0.0, 0.0, 0.0, 1.0))
# / alone in the other layouts (`long_div_<layout>`): "table" (are two-digit quotients learned
# with the divisor's multiples written first?), "trial" (each two-digit quotient digit estimated
# from one-digit facts and checked by trial products; measured: learned where "aligned" and
# "table" learned none), "trial_sub" and "trial_rem" (the trials' subtractions written out, every
# one's or only the fitting one's; both measured worse at equal tokens), "trial_pad" (the step's
# remainder at a fixed width).


def _preset(mixture: Mixture, trained: dict[str, list[int]]) -> tuple[Mixture, tuple, tuple]:
    return (mixture, *length_specs(mixture, trained=trained))


PRESETS: dict[str, tuple[Mixture, tuple, tuple]] = {
    "default": (Mixture(), HELDOUT_SPEC, LONG_SPEC),
    "addsubmul": (
        Mixture(op_weights=(0.35, 0.35, 0.3, 0.0), div_dividend_digit_weights=(0.1, 0.3, 0.6),
                div_divisor_digit_weights=(1.0,)),
        HELDOUT_SPEC[:7],
        LONG_SPEC[:4] + (("/", 4, 1, 100),),
    ),
    "long": _preset(_LONG_MIX, {"+": [5], "-": [5], "*": [3], "/": [4]}),
    "long_addsub": _preset(_LONG_ADDSUB_MIX, {"+": [5], "-": [5]}),
    "long_mul": _preset(_LONG_MUL_MIX, {"*": [3]}),
    "long_div": _preset(_LONG_DIV_MIX, {"/": [4]}),
    **{
        f"long_div_{layout}": _preset(dataclasses.replace(_LONG_DIV_MIX, layout=layout), {"/": [4]})
        for layout in ("table", *TRIAL_LAYOUTS)
    },
}


def _level(op: str, da: int, db: int) -> str:
    return str(da) if op in "+-" else f"{da}x{db}" if op == "*" else f"{da}/{db}"


def cell_label(op: str, da: int, db: int) -> str:
    """`add 3`, `mul 2x2`, `div 4/1`: how the evaluator, `--cells` and the RL task name a cell."""
    return f"{OP_NAMES[op]} {_level(op, da, db)}"


def cell_digits(label: str) -> tuple[str, int, int]:
    """`cell_label`'s inverse, as a test-set spec writes a cell: `add 3` is two 3-digit operands,
    `div 4/2` a 4-digit dividend and a 2-digit divisor."""
    name, level = label.split(" ")
    op = {v: k for k, v in OP_NAMES.items()}[name]
    if op in "+-":
        return op, int(level), int(level)
    da, db = level.replace("x", "/").split("/")
    return op, int(da), int(db)


def cell_size(op: str, da: int, db: int) -> int:
    """How many distinct problems `make_problem(rng, op, da, db)` draws from, so that a draw that
    must avoid some of them knows beforehand whether enough are left."""

    def numbers(d: int) -> int:
        return 10 if d == 1 else 9 * 10 ** (d - 1)

    if op == "-":  # larger operand first; a pair whose larger one has the wrong length: redrawn
        if da == db:
            return numbers(da) * (numbers(da) + 1) // 2
        return numbers(da) * numbers(db) if da > db else 0
    if op == "/" and db == 1:  # a divisor drawn as 0 becomes 1-9
        return numbers(da) * 9
    return numbers(da) * numbers(db)


def heldout_problems(
    seed: int | str, spec: Sequence[tuple[str, int, int, int]], exclude: Iterable[Problem] = ()
) -> list[Problem]:
    """Distinct problems per (op, digits) cell of `spec`, in a fixed order, none in `exclude`.

    A cell with fewer than `count` problems left raises ValueError instead of drawing forever."""
    rng = random.Random(seed)
    out: list[Problem] = []
    seen: set[Problem] = set(exclude)
    for op, da, db, count in spec:
        taken = sum(p.op == op and (len(str(p.a)), len(str(p.b))) == (da, db) for p in seen)
        left = cell_size(op, da, db) - taken
        if count > left:
            raise ValueError(f"{cell_label(op, da, db)}: {count} problems asked for, {left} left")
        n = 0
        while n < count:
            p = make_problem(rng, op, da, db)
            if p.op == "-" and len(str(p.a)) != da:  # the swap kept a's digit count, but be sure
                continue
            if p not in seen:
                seen.add(p)
                out.append(p)
                n += 1
    return out
