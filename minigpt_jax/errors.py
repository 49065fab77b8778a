"""What a user can get wrong, one error type per domain, and how every command reports it.

All of them live here, so that any module can raise its domain's error without importing the
module that owns the domain (the shard reader raises `DataError` without importing the trainer).
A `UserError` is bad input: its message names the file or key and says what to do, and commands
print it on one line and exit 2 (`exit_on_user_error`). Anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator


class UserError(ValueError):
    """Bad input; the message names the file or key and what to do instead."""


class ConfigError(UserError):
    """A configuration that cannot run; the message names the key."""

    def __init__(self, key: str, message: str):
        super().__init__(f"config.{key}: {message}")
        self.key = key


class DataError(UserError):
    """Data that cannot be read or does not fit the run: shards, manifests, input documents."""


class CheckpointError(UserError):
    """A checkpoint or weights directory that is missing or does not fit the model."""


class TokenizerError(UserError):
    """A tokenizer file that is missing or damaged, or is not the one a run recorded."""


class DivergedError(UserError):
    """Training went non-finite (loss or parameters). Exit status 3, not 2: the input was valid
    but the settings did not train, and a sweep script can tell the two apart."""

    exit_code = 3


@contextlib.contextmanager
def exit_on_user_error(*also: type[BaseException]) -> Iterator[None]:
    """Around a command's body: a `UserError` (or one of `also`) becomes `error: <message>` on
    stderr and exit status 2 (or the error's `exit_code`); every other exception keeps its
    traceback."""
    try:
        yield
    except (UserError, *also) as e:
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)  # one line, always
        raise SystemExit(getattr(e, "exit_code", 2)) from None


@contextlib.contextmanager
def exit_on_interrupt(what_to_do: str) -> Iterator[None]:
    """Around a command's body: Ctrl-C (SIGINT) becomes `interrupted: <what_to_do>` on stderr and
    exit status 130 (128 + SIGINT, what a shell reports), instead of a traceback."""
    try:
        yield
    except KeyboardInterrupt:
        print(f"interrupted: {what_to_do}", file=sys.stderr)
        raise SystemExit(130) from None
