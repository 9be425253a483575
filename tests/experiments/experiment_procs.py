"""Helpers for the experiments tests that run `python -m unimargin ...` as a user would: a
subprocess with this checkout importable, and the process tree read from /proc (Linux)."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import unimargin

SRC = str(Path(unimargin.__file__).resolve().parents[1])


def cli_env(**extra) -> dict:
    """The environment of a `python -m unimargin` subprocess: this checkout importable."""
    env = dict(os.environ, **extra)
    env["PYTHONPATH"] = SRC + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def run_cli(args, cwd=None, timeout=600, **extra_env) -> subprocess.CompletedProcess:
    """`python -m unimargin ARGS` to completion, output captured as text."""
    return subprocess.run([sys.executable, "-m", "unimargin", *map(str, args)], cwd=cwd, env=cli_env(**extra_env),
                          capture_output=True, text=True, timeout=timeout)


def start_cli(args, log_path, cwd=None, **extra_env) -> subprocess.Popen:
    """`python -m unimargin ARGS` in the background, in its own session (a signal sent to
    it reaches it alone, not pytest), stdout and stderr to ``log_path``. Ctrl-C has its
    default disposition in the child, as in a user's terminal: a test suite started as a
    background job of a non-interactive shell inherits SIGINT ignored, and Python then
    installs no KeyboardInterrupt handler."""
    with open(log_path, "w") as log:
        return subprocess.Popen([sys.executable, "-m", "unimargin", *map(str, args)], cwd=cwd,
                                env=cli_env(**extra_env), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=_default_sigint)


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (Linux /proc/<pid>/task/*/children, recursively)."""
    found, stack = [], [pid]
    while stack:
        parent = stack.pop()
        task_dir = Path(f"/proc/{parent}/task")
        try:
            tasks = list(task_dir.iterdir())
        except OSError:
            continue
        for task in tasks:
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
            for child in children:
                if child not in found:
                    found.append(child)
                    stack.append(child)
    return found


def start_time(pid: int) -> int | None:
    """Kernel start time of ``pid`` (field 22 of /proc/<pid>/stat), None when gone or a zombie;
    (pid, start time) identifies a process even if its pid is reused."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def alive(processes: dict[int, int]) -> list[int]:
    """The pids of ``{pid: start_time}`` that still run (same pid and same start time)."""
    return [pid for pid, started in processes.items() if start_time(pid) == started]


def write_blobs_npz(path, *, seed: int, dim: int, spread: float, n_train: int, n_test: int,
                    test_labels_seed: int | None = None) -> None:
    """Three Gaussian blobs (centres ``spread`` apart on the first axes) in ``dim``-d with an
    explicit test split, per class ``n_train`` / ``n_test`` samples. ``seed`` changes every
    value, not the shapes (np.savez stores arrays uncompressed: the file size stays the
    same); ``test_labels_seed`` replaces the TEST labels by random ones."""
    import numpy as np

    rng = np.random.default_rng(seed)
    centres = np.eye(3, dim, dtype=np.float32) * spread

    def split(n):
        y = np.repeat(np.arange(3), n)
        return (centres[y] + rng.standard_normal((len(y), dim)).astype(np.float32)), y.astype(np.int64)

    x, y = split(n_train)
    x_test, y_test = split(n_test)
    if test_labels_seed is not None:
        y_test = np.random.default_rng(test_labels_seed).integers(0, 3, len(y_test)).astype(np.int64)
    np.savez(path, x=x, y=y, x_test=x_test, y_test=y_test)
