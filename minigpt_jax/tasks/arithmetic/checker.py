"""The step verifier and answer parser: exact integer checks of what a model wrote.

`check_steps` re-derives the procedure from the problem alone (never its known answer), so it is
both the test of the generator's worked solutions and a reward: `verify_solution` is true when
every written step checks out, `true_step_fraction` gives partial credit line by line, and
`verified_vote` keeps only verified samples before a majority vote.
"""

from __future__ import annotations

import itertools
import re
from collections import Counter
from collections.abc import Sequence

from minigpt_jax.tasks.arithmetic.problems import (
    ANSWER_PREFIX,
    TRIAL_DIFFERENCES,
    Problem,
    column_sum_width,
    digits_lsf,
    divisor_table_lines,
    quotient_trials,
)

_ANSWER_RE = re.compile(r"^-?\d+(r\d+)?$")


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
_ESTIMATE_RE = re.compile(r"^(\d\d)/(\d)=(\d\d?)r(\d)$")  # a "trial" estimate (`11/1=11r0`)
_TABLE_RE = re.compile(r"^(\d+)\*(\d)=(\d+)$")
_TOTAL_RE = re.compile(r"^=(\d+)$")
_SUM_RE = re.compile(r"^\d(\+\d)+=\d+$")


class StepError(ValueError):
    """A written step that is false, malformed, or not the next step of the procedure.

    `line`, when raised by the step checks (`_implied_by`, which `right_lines` calls), is the index
    of the first step line that is not the procedure's (the number of lines when the solution
    stops short): every line before it is right. `check_steps` drops blank lines and checks the
    answer line first, so its own indices are only a hint.
    """

    def __init__(self, message: str, line: int):
        super().__init__(message)
        self.line = line


def _check_count(lines: list[str], width: int, what: str) -> None:
    """Raised after the lines present were checked, so a short solution's error is where it stops
    and a long one's is its first extra line."""
    if len(lines) != width:
        raise StepError(f"{width} {what}, {len(lines)} lines", min(len(lines), width))


def _check_add(a: int, b: int, lines: list[str], width: int) -> int:
    carry, digits = 0, []
    for i, (line, x, y) in enumerate(
        zip(lines, digits_lsf(a, width), digits_lsf(b, width), strict=False)
    ):
        m = _ADD_RE.match(line)
        if not m:
            raise StepError(f"malformed addition step {line!r}", i)
        lx, ly, lc, s = (int(g) for g in m.groups())
        if (lx, ly, lc) != (x, y, carry):
            raise StepError(f"{line!r}: expected digits {x},{y} and carry {carry}", i)
        if lx + ly + lc != s:
            raise StepError(f"{line!r} is false", i)
        digits.append(s % 10)
        carry = s // 10
    _check_count(lines, width, "columns")
    return int("".join(map(str, reversed(digits + [carry]))))


def _check_sub(a: int, b: int, lines: list[str], width: int) -> int:
    borrow, digits = 0, []
    for i, (line, x, y) in enumerate(
        zip(lines, digits_lsf(a, width), digits_lsf(b, width), strict=False)
    ):
        m = _SUB_RE.match(line)
        if not m:
            raise StepError(f"malformed subtraction step {line!r}", i)
        lb, lx, ly, lc, d = (int(g) for g in m.groups())
        if (lx, ly, lc) != (x, y, borrow):
            raise StepError(f"{line!r}: expected digits {x},{y} and borrow {borrow}", i)
        if 10 * lb + lx - ly - lc != d:
            raise StepError(f"{line!r} is false", i)
        if i == width - 1 and lb:
            raise StepError(f"{line!r} borrows out of the last column (a < b)", i)
        digits.append(d)
        borrow = lb
    _check_count(lines, width, "columns")
    return int("".join(map(str, reversed(digits))))


def _expect_total(lines: list[str], pos: int, value: int, width: int, what: str) -> None:
    m = _TOTAL_RE.match(lines[pos]) if pos < len(lines) else None
    if not m or m.group(1) != f"{value:0{width}d}":
        raise StepError(f"{what} {value} not written as '={value:0{width}d}'", pos)


def _check_mul(a: int, b: int, lines: list[str], wa: int, wb: int) -> int:
    pos, total = 0, 0
    for j, y in enumerate(digits_lsf(b, wb)):
        carry, digits = 0, []
        for x in digits_lsf(a, wa):
            if pos >= len(lines):
                raise StepError("solution ends inside a partial product", pos)
            m = _MUL_RE.match(lines[pos])
            if not m:
                raise StepError(f"malformed multiplication step {lines[pos]!r}", pos)
            lx, ly, lc, v = (int(g) for g in m.groups())
            if (lx, ly, lc) != (x, y, carry) or lx * ly + lc != v:
                raise StepError(f"{lines[pos]!r} is false or out of order", pos)
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
        try:
            total = _check_add(total, partial * 10**j, lines[pos : pos + width], width)
        except StepError as e:
            raise StepError(str(e), pos + e.line) from None
        pos += width
        if j < wb - 1:
            _expect_total(lines, pos, total, width, "running total")
            pos += 1
    if pos != len(lines):
        raise StepError(f"{len(lines) - pos} extra lines", pos)
    return total


def _check_mul_columns(a: int, b: int, lines: list[str], wa: int, wb: int) -> int:
    """x in the "aligned" layout (`problems._mul_column_lines`): per line, wb digit products with
    their own carry chains, then the column sum of the shifted products' units and its carry."""
    b_digits = digits_lsf(b, wb)
    sum_re = re.compile(
        "^" + r"\+".join([r"(\d)"] * wb) + rf"\+(\d)=(\d{{{column_sum_width(wb)}}})$"
    )
    carries, units, add_carry, digits = [0] * wb, [], 0, []
    for s, (line, x) in enumerate(zip(lines, digits_lsf(a, wa + wb), strict=False)):
        parts = line.split(",")
        if len(parts) != wb + 1:
            raise StepError(f"{line!r}: expected {wb} products and a column sum", s)
        row = []
        for j, (part, y) in enumerate(zip(parts, b_digits, strict=False)):
            m = _MUL_RE.match(part)
            if not m:
                raise StepError(f"malformed multiplication step {part!r}", s)
            lx, ly, lc, v = (int(g) for g in m.groups())
            if (lx, ly, lc) != (x, y, carries[j]) or lx * ly + lc != v:
                raise StepError(f"{part!r} is false or out of order", s)
            carries[j] = v // 10
            row.append(v % 10)
        units.append(row)
        m = sum_re.match(parts[-1])
        if not m:
            raise StepError(f"malformed column sum {parts[-1]!r}", s)
        *terms, carry, v = (int(g) for g in m.groups())
        want = [units[s - j][j] if s >= j else 0 for j in range(wb)]
        if terms != want or carry != add_carry or sum(terms) + carry != v:
            raise StepError(f"{parts[-1]!r}: expected {'+'.join(map(str, want))}+{add_carry}", s)
        digits.append(v % 10)
        add_carry = v // 10
    _check_count(lines, wa + wb, "product columns")
    return int("".join(map(str, reversed(digits + [add_carry]))))


def _check_div(a: int, b: int, lines: list[str], wa: int) -> str:
    """Long division, any layout; in the "table" one the divisor's multiples come first, each
    line exactly `problems.divisor_table_lines`'s (a false or missing multiple is a wrong step);
    in the trial ones (`problems.TRIAL_DIFFERENCES`) a step's line that has trials starts with
    exactly `problems.quotient_trials`'s equations, with the differences of none, all or only the
    fitting trial product (a bare step line is still a right step). Numbers are read as values,
    so a step's remainder written at the divisor's width ("trial_pad": `9r08`) or not (`9r8`)
    checks in every layout, as a bare step line does: the layouts differ in what they teach,
    not in what is true."""
    if lines and _TABLE_RE.match(lines[0]):
        table = divisor_table_lines(b)
        for i, (line, want) in enumerate(zip(lines, table, strict=False)):
            if line != want:
                raise StepError(f"{line!r}: expected the multiple {want!r}", i)
        _check_count(lines[: len(table)], len(table), "multiples of the divisor")
        try:
            return _check_div_steps(a, b, lines[len(table) :], wa)
        except StepError as e:
            raise StepError(str(e), len(table) + e.line) from None
    return _check_div_steps(a, b, lines, wa)


def _check_div_steps(a: int, b: int, lines: list[str], wa: int) -> str:
    digits = f"{a:0{wa}d}"
    rem, q_digits = 0, []
    for i, (line, c) in enumerate(zip(lines, digits, strict=False)):
        *trials, line = line.split(",")
        if trials:  # a trial layout: exactly the estimate and products (and differences)
            cur = rem * 10 + int(c)
            forms = dict.fromkeys(TRIAL_DIFFERENCES.values())
            if b < 10 or not any(trials == quotient_trials(cur, b, d) for d in forms):
                raise StepError(f"{','.join(trials)!r}: expected trials for {cur}/{b}", i)
        m = _DIV_RE.match(line)
        if not m:
            raise StepError(f"malformed division step {line!r}", i)
        cur, lb, q, r = (int(g) for g in m.groups())
        if cur != rem * 10 + int(c) or lb != b:
            raise StepError(f"{line!r}: expected {rem * 10 + int(c)}/{b}", i)
        if q * b + r != cur or not 0 <= r < b:
            raise StepError(f"{line!r} is false", i)
        q_digits.append(q)
        rem = r
    _check_count(lines, len(digits), "dividend digits")
    return f"{int(''.join(map(str, q_digits)))}r{rem}"


def _implied_by(problem: Problem, steps: list[str]) -> str:
    (wa, wb), a, b = problem.widths, problem.a, problem.b
    if problem.op == "+":
        return str(_check_add(a, b, steps, wa))
    if problem.op == "-":
        return str(_check_sub(a, b, steps, wa))
    if problem.op == "*":  # any layout (problems.LAYOUTS)
        columns = bool(steps) and "," in steps[0]
        return str((_check_mul_columns if columns else _check_mul)(a, b, steps, wa, wb))
    return _check_div(a, b, steps, wa)  # any layout; a padded quotient or remainder parses the same


def steps_are_right(problem: Problem, completion: str) -> bool:
    """True when the lines before the first answer line are exactly the procedure's steps, whatever
    the answer line says (or whether there is one).

    Separates the two ways a solution fails: a wrong step (the procedure was not carried out) and
    right steps with a wrong answer line (the steps were not read back into the answer). With no
    worked steps at all there is nothing to be right, so this is False.
    """
    lines = filter(None, completion.split("\n"))
    steps = list(itertools.takewhile(lambda line: not line.startswith(ANSWER_PREFIX), lines))
    if not steps:
        return False
    try:
        _implied_by(problem, steps)
    except StepError:
        return False
    return True


def check_steps(problem: Problem, completion: str) -> str:
    """The answer the written steps imply, after checking every step; raises StepError otherwise.

    Checks that each line is a true equation, that it is the procedure's next step for this problem
    (right operand digits, carries and remainders chained), and that the answer line states what
    the steps computed. Uses only the problem, never its known answer.
    """
    lines = [ln for ln in completion.split("\n") if ln]
    if not lines or not lines[-1].startswith(ANSWER_PREFIX):
        raise StepError("no final answer line", len(lines))
    stated = parse_answer(lines[-1])
    if stated is None:
        raise StepError(f"unparseable answer line {lines[-1]!r}", len(lines) - 1)
    implied = _implied_by(problem, lines[:-1])
    if implied != stated:
        message = f"the steps give {implied} but the answer line says {stated}"
        raise StepError(message, len(lines) - 1)
    return implied


def right_lines(problem: Problem, completion: str) -> int:
    """How many of the completion's lines (split at every newline), from the first, are right:
    the procedure's steps in order, then an answer line stating what they computed.

    The per-line process reward of RL: a solution is right up to its first wrong line, and that
    line is where the credit for a failure belongs. Like `check_steps`, it uses only the problem.
    Unlike `verify_solution`, a blank line counts as a wrong line: the lines are indexed as the
    model wrote them (the per-token credit maps tokens to lines by their newlines), and the
    procedure writes none.
    """
    lines = completion.split("\n")
    steps = list(itertools.takewhile(lambda line: not line.startswith(ANSWER_PREFIX), lines))
    try:
        implied = _implied_by(problem, steps)
    except StepError as e:
        return e.line
    if len(steps) < len(lines) and parse_answer(lines[len(steps)]) == implied:
        return len(steps) + 1
    return len(steps)


def true_step_fraction(completion: str) -> float | None:
    """The share of written step lines that are true equations on their own (None: no steps).

    Partial credit that shows learning before whole answers come right: it checks each line in
    isolation (a true `3+4+0=07` counts even if it is the wrong column), unlike `check_steps`.
    """
    verdicts = []
    for text in completion.split("\n"):
        if not text or text.startswith(ANSWER_PREFIX) or _TOTAL_RE.match(text):
            continue
        verdicts.append(all(map(_true_equation, text.split(","))))  # aligned x: 3 per line
    return sum(verdicts) / len(verdicts) if verdicts else None


def _true_equation(line: str) -> bool:
    """Whether one equation of a known step form is true on its own."""
    if m := _ADD_RE.match(line):
        x, y, c, s = (int(g) for g in m.groups())
        return x + y + c == s
    if m := _SUB_RE.match(line):
        b, x, y, c, d = (int(g) for g in m.groups())
        return 10 * b + x - y - c == d
    if m := _MUL_RE.match(line):
        x, y, c, v = (int(g) for g in m.groups())
        return x * y + c == v
    if m := _TABLE_RE.match(line):  # a multiple of the divisor ("table" layout)
        b, k, v = (int(g) for g in m.groups())
        return b * k == v
    if (m := _DIV_RE.match(line) or _ESTIMATE_RE.match(line)) and int(m.group(2)) > 0:
        cur, b, q, r = (int(g) for g in m.groups())
        return q * b + r == cur and r < b
    if _SUM_RE.match(line):  # an aligned x column sum of 3+ terms, e.g. 5+0+7+1=13
        *terms, total = (int(g) for g in re.findall(r"\d+", line))
        return sum(terms) == total
    return False  # not a step of any known form


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
