"""One writer per run directory: the lock every command that writes into a run_dir takes first.

Two trainings on one run_dir interleave `metrics.jsonl` and mix checkpoints from two seeds, so the
second must stop before it touches anything. The lock is an `flock` on `<run_dir>/lock`, which the
kernel releases when its holder dies however it dies (SIGKILL included): a lock file left behind
is stale exactly when nobody holds the flock, so a new run takes it over without guessing from
pids. The file names the holder (pid, host, command) for the message the second run prints.

Each process of a multi-host job on a shared filesystem locks its own file (`lock.<process id>`);
the process id comes from the launcher's environment, as nothing here may touch a JAX device.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from minigpt_jax.errors import ConfigError

_PROCESS_ID_VARS = ("JAX_PROCESS_ID", "SLURM_PROCID", "OMPI_COMM_WORLD_RANK")


def lock_path(run_dir: str | os.PathLike) -> Path:
    process_id = next((os.environ[v] for v in _PROCESS_ID_VARS if v in os.environ), None)
    name = "lock" if process_id in (None, "0") else f"lock.{process_id}"
    return Path(run_dir) / name


def _holder(text: str) -> str:
    try:
        info = json.loads(text)
        return f"pid {info['pid']} on {info['host']} (since {info['started']}: {info['command']})"
    except (ValueError, KeyError, TypeError):
        return "another process"


def _make_dir(run_dir: Path, key: str) -> list[Path]:
    """Create run_dir (and missing parents); returns what was created, deepest last."""
    created = []
    for parent in (*reversed(run_dir.parents), run_dir):
        if not parent.exists():
            created.append(parent)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ConfigError(
            key, f"{run_dir} is a file, not a directory; pass another run_dir"
        ) from None
    except OSError as e:
        raise ConfigError(
            key, f"cannot create {run_dir} ({e.strerror}); pass another run_dir"
        ) from e
    return created


class RunDirLock:
    """The held lock: `release()` removes the lock file, then drops the flock (in that order, so
    no third process locks a file about to disappear). Safe from a signal handler before
    `os._exit`, and idempotent."""

    def __init__(self, path: Path, fd: int, created: list[Path]):
        self.path, self._fd, self._created = path, fd, created

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            self.path.unlink()
        os.close(self._fd)
        self._fd = None
        _remove_empty(self._created)


def acquire(run_dir: str | os.PathLike, key: str = "run_dir") -> RunDirLock:
    """Take `run_dir`'s lock; one `ConfigError` naming `key` and the holder if another live
    process has it. Release removes the lock file (and a run_dir this created and left empty), so
    a run that fails at once leaves the directory as it found it."""
    run_dir = Path(run_dir)
    created = _make_dir(run_dir, key)
    path = lock_path(run_dir)
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            _remove_empty(created)
            raise ConfigError(
                key, f"cannot write in {run_dir} ({e.strerror}); make it writable or pass "
                f"another run_dir"
            ) from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(os.pread(fd, 4096, 0).decode(errors="replace"))
            os.close(fd)
            raise ConfigError(
                key, f"{run_dir} is in use by {holder}; wait for it to finish, stop it, or pass "
                f"another run_dir"
            ) from None
        try:
            same_file = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same_file = False
        if same_file:
            break
        os.close(fd)  # the holder released (and removed) it between our open and flock: retry
    stale = os.pread(fd, 4096, 0).decode(errors="replace")
    if stale.strip():
        print(f"note: taking over the stale lock of {_holder(stale)} in {path} (that process is "
              f"gone)", file=sys.stderr)
    record = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": " ".join(sys.argv)[:300],
    }
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(record).encode(), 0)
    return RunDirLock(path, fd, created)


@contextlib.contextmanager
def locked(run_dir: str | os.PathLike, key: str = "run_dir") -> Iterator[RunDirLock]:
    """`acquire` for the body, released however it ends."""
    lock = acquire(run_dir, key)
    try:
        yield lock
    finally:
        lock.release()


def _remove_empty(dirs: list[Path]) -> None:
    for d in reversed(dirs):
        with contextlib.suppress(OSError):
            d.rmdir()  # only if still empty
