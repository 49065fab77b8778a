"""Calculator arithmetic as text: problems, worked solutions, the answer parser, a step verifier.

A problem is one line with its operands zero-padded to a fixed width (`347+085`); its worked
solution is one fixed-width line per elementary step, each an exact equation about one column that
restates the digits it uses (`7+5+0=12`: digits plus carry in, the tens digit being the carry out),
least significant column first, then the answer line, also zero-padded (`A:0432`). Because every
width is fixed, each digit a step needs sits at a constant offset from the start of the problem:
a small byte-level transformer with learned absolute positions learns that lookup in minutes,
where with unpadded operands it had to find "the i-th digit from the right" of a number of any
length (measured: 0% after 600 steps; see bench/results_arithmetic.md). Widths are at least
`MIN_WIDTH[op]` and grow for longer numbers. The `steps=False` variant writes the answer line alone.

    add  347+085  7+5+0=12 / 4+8+1=13 / 3+0+1=04 / A:0432    (least significant column first)
    sub  532-285  12-5-0=7 / 13-8-1=4 / 05-2-1=2 / A:247     (a >= b; the leading digit of a
                                                              step is the borrow out)
    mul  47*85    7*5+0=35 / 4*5+3=23 / =235 / 7*8+0=56 / 4*8+5=37 / =376 /
                  5+0+0=05 / 3+6+0=09 / 2+7+0=09 / 0+3+0=03 / A:3995
                  (a partial product `=376` is written unshifted, a*digit in width(a)+1 digits;
                  adding it shifted to the running total is written column by column)
    div  847/6    08/6=1r2 / 24/6=4r0 / 07/6=1r1 / A:141r1   (quotient r remainder)

Solutions are checked with exact integer arithmetic by `verify_solution`, which is both the test of
the generator and the inference-time verifier that filters sampled solutions.
"""

from __future__ import annotations

import dataclasses
import random
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence

OPS = ("+", "-", "*", "/")
OP_NAMES = {"+": "add", "-": "sub", "*": "mul", "/": "div"}
ANSWER_PREFIX = "A:"
_ANSWER_RE = re.compile(r"^-?\d+(r\d+)?$")
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
        if self.op in "+-":
            return str(max(da, db))
        return f"{da}x{db}" if self.op == "*" else f"{da}/{db}"

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


def _digits_lsf(n: int, width: int) -> list[int]:
    """Digits least significant first, zero-padded to `width`."""
    return [int(c) for c in reversed(str(n).rjust(width, "0"))]


def _add_lines(a: int, b: int, width: int) -> list[str]:
    carry, lines = 0, []
    for x, y in zip(_digits_lsf(a, width), _digits_lsf(b, width), strict=True):
        s = x + y + carry
        lines.append(f"{x}+{y}+{carry}={s:02d}")
        carry = s // 10
    return lines


def _sub_lines(a: int, b: int, width: int) -> list[str]:
    borrow, lines = 0, []
    for x, y in zip(_digits_lsf(a, width), _digits_lsf(b, width), strict=True):
        borrow_out = int(x - y - borrow < 0)
        lines.append(f"{borrow_out}{x}-{y}-{borrow}={10 * borrow_out + x - y - borrow}")
        borrow = borrow_out
    return lines


def _mul_lines(a: int, b: int, wa: int, wb: int) -> list[str]:
    """Digit products per digit of b, its partial product, then the running total's addition
    written over a fixed number of columns (wa + j + 1 for digit j: the total always fits)."""
    lines: list[str] = []
    total = 0
    for j, y in enumerate(_digits_lsf(b, wb)):
        carry = 0
        for x in _digits_lsf(a, wa):
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


def _div_lines(a: int, b: int, wa: int) -> list[str]:
    width = len(str(b)) + 1  # fixed-width lines: every partial dividend is below 10 * b
    lines, rem = [], 0
    for c in f"{a:0{wa}d}":
        cur = rem * 10 + int(c)
        q, rem = divmod(cur, b)
        lines.append(f"{cur:0{width}d}/{b}={q}r{rem}")
    return lines


def _step_lines(problem: Problem) -> list[str]:
    (wa, wb), a, b = problem.widths, problem.a, problem.b
    if problem.op == "+":
        return _add_lines(a, b, wa)
    if problem.op == "-":
        return _sub_lines(a, b, wa)
    if problem.op == "*":
        return _mul_lines(a, b, wa, wb)
    return _div_lines(a, b, wa)


def solution(problem: Problem, steps: bool = True) -> str:
    """The completion after the prompt: worked steps (optional) and the answer line."""
    lines = _step_lines(problem) if steps else []
    return "".join(line + "\n" for line in lines) + f"{ANSWER_PREFIX}{problem.written_answer}\n"


def document(problem: Problem, steps: bool = True) -> str:
    """One training document (the tokenizer's end-of-text goes before it)."""
    return problem.prompt + solution(problem, steps)


# --- problem generation ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Mixture:
    """Which problems training sees: operation weights and digit counts per operand.

    Digit counts are drawn per operand from `*_digit_weights` (index 0 = 1 digit); larger counts get
    more weight because they hold most of the procedure (carries over several columns).
    """

    # + - * /: what the targets measure (3-digit + and -, 2-digit x); division is generated and
    # verified but left out of the default mix so the CPU budget goes to the measured procedures.
    op_weights: tuple[float, float, float, float] = (0.35, 0.35, 0.3, 0.0)
    addsub_digit_weights: tuple[float, ...] = (0.1, 0.2, 0.7)
    mul_digit_weights: tuple[float, ...] = (0.3, 0.7)
    div_dividend_digit_weights: tuple[float, ...] = (0.1, 0.3, 0.6)
    div_divisor_digit_weights: tuple[float, ...] = (1.0,)

    def max_digits(self) -> dict[str, int]:
        return {
            "+": len(self.addsub_digit_weights),
            "-": len(self.addsub_digit_weights),
            "*": len(self.mul_digit_weights),
            "/": len(self.div_dividend_digit_weights),
        }


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
    if op in "+-":
        w = mix.addsub_digit_weights
        da, db = (rng.choices(range(1, len(w) + 1), weights=w)[0] for _ in range(2))
    elif op == "*":
        w = mix.mul_digit_weights
        da, db = (rng.choices(range(1, len(w) + 1), weights=w)[0] for _ in range(2))
    else:
        wa, wb = mix.div_dividend_digit_weights, mix.div_divisor_digit_weights
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
)
LONG_SPEC = (
    ("+", 4, 4, 100),
    ("+", 5, 5, 100),
    ("-", 4, 4, 100),
    ("*", 3, 2, 100),
    ("/", 4, 1, 100),
)


def test_problems(seed: int, spec: Sequence[tuple[str, int, int, int]]) -> list[Problem]:
    """Distinct problems per (op, digits) cell of `spec`, in a fixed order."""
    rng = random.Random(seed)
    out: list[Problem] = []
    seen: set[Problem] = set()
    for op, da, db, count in spec:
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


# --- parsing, verification, voting ------------------------------------------------------------


def parse_answer(text: str) -> str | None:
    """The final answer of a generated solution: the last `A:` line, canonicalised, or None.

    Leading zeros are dropped (`A:0632` -> `632`) so that equal numbers vote together; anything that
    is not a number (or `q r r` for division) is None, i.e. counted wrong.
    """
    found = None
    for line in text.split("\n"):
        if line.startswith(ANSWER_PREFIX):
            found = line[len(ANSWER_PREFIX) :].strip()
    if found is None or not _ANSWER_RE.match(found):
        return None
    neg = found.startswith("-")
    body = found.lstrip("-")
    if "r" in body:
        q, r = body.split("r")
        return f"{int(q)}r{int(r)}"
    value = int(body)
    return str(-value if neg else value)


def majority_vote(answers: Sequence[str | None]) -> str | None:
    """The most common parsed answer; a tie goes to the one seen first; None if none parsed."""
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return None
    best = max(counts.values())
    return next(a for a in answers if a is not None and counts[a] == best)


_ADD_RE = re.compile(r"^(\d)\+(\d)\+([01])=(\d\d)$")
_SUB_RE = re.compile(r"^([01])(\d)-(\d)-([01])=(\d)$")
_MUL_RE = re.compile(r"^(\d)\*(\d)\+(\d)=(\d\d)$")
_DIV_RE = re.compile(r"^(\d+)/(\d+)=(\d)r(\d+)$")
_TOTAL_RE = re.compile(r"^=(\d+)$")


class StepError(ValueError):
    """A written step that is false, malformed, or not the next step of the procedure."""


def _check_add(a: int, b: int, lines: list[str], width: int) -> int:
    if len(lines) != width:
        raise StepError(f"{width} columns, {len(lines)} lines")
    carry, digits = 0, []
    for line, x, y in zip(lines, _digits_lsf(a, width), _digits_lsf(b, width), strict=True):
        m = _ADD_RE.match(line)
        if not m:
            raise StepError(f"malformed addition step {line!r}")
        lx, ly, lc, s = (int(g) for g in m.groups())
        if (lx, ly, lc) != (x, y, carry):
            raise StepError(f"{line!r}: expected digits {x},{y} and carry {carry}")
        if lx + ly + lc != s:
            raise StepError(f"{line!r} is false")
        digits.append(s % 10)
        carry = s // 10
    return int("".join(map(str, reversed(digits + [carry]))))


def _check_sub(a: int, b: int, lines: list[str], width: int) -> int:
    if len(lines) != width:
        raise StepError(f"{width} columns, {len(lines)} lines")
    borrow, digits = 0, []
    for line, x, y in zip(lines, _digits_lsf(a, width), _digits_lsf(b, width), strict=True):
        m = _SUB_RE.match(line)
        if not m:
            raise StepError(f"malformed subtraction step {line!r}")
        lb, lx, ly, lc, d = (int(g) for g in m.groups())
        if (lx, ly, lc) != (x, y, borrow):
            raise StepError(f"{line!r}: expected digits {x},{y} and borrow {borrow}")
        if 10 * lb + lx - ly - lc != d:
            raise StepError(f"{line!r} is false")
        digits.append(d)
        borrow = lb
    if borrow:
        raise StepError("borrow out of the last column (a < b)")
    return int("".join(map(str, reversed(digits))))


def _expect_total(lines: list[str], pos: int, value: int, width: int, what: str) -> None:
    m = _TOTAL_RE.match(lines[pos]) if pos < len(lines) else None
    if not m or m.group(1) != f"{value:0{width}d}":
        raise StepError(f"{what} {value} not written as '={value:0{width}d}'")


def _check_mul(a: int, b: int, lines: list[str], wa: int, wb: int) -> int:
    pos, total = 0, 0
    for j, y in enumerate(_digits_lsf(b, wb)):
        carry, digits = 0, []
        for x in _digits_lsf(a, wa):
            if pos >= len(lines):
                raise StepError("solution ends inside a partial product")
            m = _MUL_RE.match(lines[pos])
            if not m:
                raise StepError(f"malformed multiplication step {lines[pos]!r}")
            lx, ly, lc, v = (int(g) for g in m.groups())
            if (lx, ly, lc) != (x, y, carry) or lx * ly + lc != v:
                raise StepError(f"{lines[pos]!r} is false or out of order")
            digits.append(v % 10)
            carry = v // 10
            pos += 1
        partial = int("".join(map(str, reversed(digits + [carry]))))
        if wb == 1:
            total = partial
            break
        _expect_total(lines, pos, partial, wa + 1, "partial product")
        pos += 1
        if j == 0:
            total = partial
            continue
        width = wa + j + 1
        total = _check_add(total, partial * 10**j, lines[pos : pos + width], width)
        pos += width
        if j < wb - 1:
            _expect_total(lines, pos, total, width, "running total")
            pos += 1
    if pos != len(lines):
        raise StepError(f"{len(lines) - pos} extra lines")
    return total


def _check_div(a: int, b: int, lines: list[str], wa: int) -> str:
    digits = f"{a:0{wa}d}"
    if len(lines) != len(digits):
        raise StepError(f"{len(digits)} dividend digits, {len(lines)} lines")
    rem, q_digits = 0, []
    for line, c in zip(lines, digits, strict=True):
        m = _DIV_RE.match(line)
        if not m:
            raise StepError(f"malformed division step {line!r}")
        cur, lb, q, r = (int(g) for g in m.groups())
        if cur != rem * 10 + int(c) or lb != b:
            raise StepError(f"{line!r}: expected {rem * 10 + int(c)}/{b}")
        if q * b + r != cur or not 0 <= r < b:
            raise StepError(f"{line!r} is false")
        q_digits.append(q)
        rem = r
    return f"{int(''.join(map(str, q_digits)))}r{rem}"


def check_steps(problem: Problem, completion: str) -> str:
    """The answer the written steps imply, after checking every step; raises StepError otherwise.

    Checks that each line is a true equation, that it is the procedure's next step for this problem
    (right operand digits, carries and remainders chained), and that the answer line states what
    the steps computed. Uses only the problem, never its known answer.
    """
    lines = [ln for ln in completion.split("\n") if ln]
    if not lines or not lines[-1].startswith(ANSWER_PREFIX):
        raise StepError("no final answer line")
    stated = parse_answer(lines[-1])
    if stated is None:
        raise StepError(f"unparseable answer line {lines[-1]!r}")
    steps = lines[:-1]
    (wa, wb), a, b = problem.widths, problem.a, problem.b
    if problem.op == "+":
        implied = str(_check_add(a, b, steps, wa))
    elif problem.op == "-":
        implied = str(_check_sub(a, b, steps, wa))
    elif problem.op == "*":
        implied = str(_check_mul(a, b, steps, wa, wb))
    else:
        implied = _check_div(a, b, steps, wa)
    if implied != stated:
        raise StepError(f"the steps give {implied} but the answer line says {stated}")
    return implied


def true_step_fraction(completion: str) -> float | None:
    """The share of written step lines that are true equations on their own (None: no steps).

    Partial credit that shows learning before whole answers come right: it checks each line in
    isolation (a true `3+4+0=07` counts even if it is the wrong column), unlike `check_steps`.
    """
    verdicts = []
    for line in completion.split("\n"):
        if not line or line.startswith(ANSWER_PREFIX) or _TOTAL_RE.match(line):
            continue
        if m := _ADD_RE.match(line):
            x, y, c, s = (int(g) for g in m.groups())
            verdicts.append(x + y + c == s)
        elif m := _SUB_RE.match(line):
            b, x, y, c, d = (int(g) for g in m.groups())
            verdicts.append(10 * b + x - y - c == d)
        elif m := _MUL_RE.match(line):
            x, y, c, v = (int(g) for g in m.groups())
            verdicts.append(x * y + c == v)
        elif (m := _DIV_RE.match(line)) and int(m.group(2)) > 0:
            cur, b, q, r = (int(g) for g in m.groups())
            verdicts.append(q * b + r == cur and r < b)
        else:
            verdicts.append(False)  # not a step of any known form
    return sum(verdicts) / len(verdicts) if verdicts else None


def verify_solution(problem: Problem, completion: str) -> bool:
    """True when every written step checks out (see `check_steps`)."""
    try:
        check_steps(problem, completion)
    except StepError:
        return False
    return True


def verified_vote(problem: Problem, completions: Sequence[str]) -> str | None:
    """Majority answer among the completions whose steps verify; plain majority if none verify."""
    answers = [parse_answer(c) for c in completions]
    kept = [a for a, c in zip(answers, completions, strict=True) if verify_solution(problem, c)]
    return majority_vote(kept) if kept else majority_vote(answers)
