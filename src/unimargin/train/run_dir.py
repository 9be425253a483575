"""The run directory: its files, its lock, refusing to clobber another run, and
:func:`load_run`.

``DIR/config.yaml`` (the resolved config, re-runnable), ``DIR/metrics.jsonl`` (one JSON line
per epoch), ``DIR/summary.json`` (the outcome), ``DIR/checkpoints/last.pt`` (the resume
state; with ``select_epoch=best`` also ``best.pt``, the kept model) and, while a process
writes the run, ``DIR/.lock``. Every file is written atomically through :mod:`unimargin.io`.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from .checkpoint import load_checkpoint
from .config import TrainConfig
from .net import UnimarginNet, build_net

CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.pt"
BEST_CHECKPOINT = "best.pt"     # select_epoch=best: the kept model (last.pt resumes)
RUN_FILES = ("config.yaml", "metrics.jsonl", "summary.json", CHECKPOINT_DIR, "tensorboard")


def checkpoint_path(run_dir: str, name: str = LAST_CHECKPOINT) -> str:
    """``run_dir/checkpoints/last.pt`` (or ``name``)."""
    return os.path.join(run_dir, CHECKPOINT_DIR, name)


@dataclass
class LoadedRun:
    """A trained run loaded by :func:`load_run`: ``model`` is the UnimarginNet (eval mode;
    ``model(x)`` gives features of raw inputs), ``head`` is ``model.head``."""

    model: UnimarginNet
    head: nn.Module
    config: TrainConfig
    epoch: int
    history: list
    classes: list = field(default_factory=list)
    path: str = ""
    in_shape: tuple = ()
    preprocessing: dict = field(default_factory=dict)
    class_means: torch.Tensor | None = None
    selected_epoch: int | None = None


def _checkpoint_path(path: str) -> str:
    """A checkpoint file as given; for a run directory, the kept model: ``best.pt`` when
    the run selected its best epoch, else ``last.pt``."""
    if not os.path.isdir(path):
        return path
    best = checkpoint_path(path, BEST_CHECKPOINT)
    return best if os.path.isfile(best) else checkpoint_path(path)


def load_run(path: str | os.PathLike, build_backbone: Callable | None = None) -> LoadedRun:
    """Load a run directory (its ``checkpoints/last.pt``) or a checkpoint file.

    Raises ValueError naming the file when it is missing, corrupt or inconsistent.
    """
    ckpt_path = _checkpoint_path(os.fspath(path))
    ckpt = load_checkpoint(ckpt_path)
    try:
        cfg = TrainConfig.from_dict(ckpt["config"], source=f"checkpoint {ckpt_path!r}")
        info = ckpt["data"]
        net = build_net(cfg, info["in_shape"], int(info["num_classes"]),
                        mean=ckpt["model"].get("input_mean"), std=ckpt["model"].get("input_std"),
                        build_backbone=build_backbone)
        net.load_state_dict(ckpt["model"])
    except (KeyError, RuntimeError, TypeError) as exc:
        raise ValueError(f"checkpoint {ckpt_path!r} does not match its own config: {exc}") from exc
    net.eval()
    means = ckpt.get("class_means")
    return LoadedRun(model=net, head=net.head, config=cfg, epoch=int(ckpt["epoch"]),
                     history=list(ckpt["history"]), classes=list(info.get("classes", [])),
                     path=ckpt_path, in_shape=tuple(info["in_shape"]),
                     preprocessing=dict(ckpt.get("preprocessing") or {}),
                     class_means=None if means is None else means.float(),
                     selected_epoch=ckpt.get("selected_epoch"))


def holds_run(path: str) -> list[str]:
    """The run files (:data:`RUN_FILES`) present in directory ``path``."""
    return [f for f in RUN_FILES if os.path.exists(os.path.join(path, f))]


def check_out_dir(cfg: TrainConfig) -> None:
    """Refuse to write into a directory holding another run (unless resume/overwrite), and
    ``--resume`` where there is no checkpoint to resume from."""
    if os.path.exists(cfg.out) and not os.path.isdir(cfg.out):
        raise ValueError(f"out: {cfg.out!r} exists and is not a directory")
    if cfg.resume:
        if not os.path.isfile(checkpoint_path(cfg.out)):
            raise ValueError(f"--resume: no checkpoint {checkpoint_path(cfg.out)!r} to resume "
                             f"from; train without --resume (or with --overwrite to replace "
                             f"what {cfg.out!r} holds)")
        return
    if not os.path.isdir(cfg.out) or cfg.overwrite:
        return
    present = holds_run(cfg.out)
    if present:
        raise ValueError(f"output directory {cfg.out!r} already holds a run ({', '.join(present)}); "
                         f"use --resume to continue it or --overwrite to replace it")


# --------------------------------------------------------------------------- locking
LOCK_FILE = ".lock"


def _process_start(pid: int) -> str | None:
    """The start time of ``pid`` (Linux /proc; None elsewhere): a PID reused by another
    process after the holder died then does not look like the holder."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            return fh.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    now = _process_start(pid)
    return start is None or now is None or now == start


class RunLock:
    """``DIR/.lock`` held by the process writing run directory ``DIR``.

    Created with O_EXCL and holding ``pid host start-time``. A second writer gets a
    ValueError naming the holder's PID; a lock whose holder is dead (same host, PID gone
    or reused) is taken over: it is first renamed to a unique name, which only one of
    several racing processes can do, then created afresh.
    """

    def __init__(self, directory: str):
        self.directory = directory
        self.path = os.path.join(directory, LOCK_FILE)
        self.held = False

    def _identity(self) -> str:
        return f"{os.getpid()} {socket.gethostname()} {_process_start(os.getpid()) or '-'}\n"

    def acquire(self) -> "RunLock":
        os.makedirs(self.directory, exist_ok=True)
        for _ in range(10):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._take_over_if_stale()
                continue
            with os.fdopen(fd, "w", encoding="ascii") as fh:
                fh.write(self._identity())
            self.held = True
            return self
        raise ValueError(f"run directory {self.directory!r}: could not take the lock {self.path!r}")

    def _take_over_if_stale(self) -> None:
        try:
            with open(self.path, encoding="ascii", errors="replace") as fh:
                parts = fh.read().split()
        except FileNotFoundError:
            return
        pid, host, start = (parts + ["", "", "-"])[:3]
        if not pid.isdigit():
            holder = "an unknown process"
        elif host != socket.gethostname():
            holder = f"process {pid} on host {host}"
        elif _alive(int(pid), None if start == "-" else start):
            holder = f"process {pid}"
        else:
            stale = f"{self.path}.stale-{os.getpid()}"
            try:
                os.rename(self.path, stale)
                os.unlink(stale)
            except FileNotFoundError:
                pass  # another process took it over first
            return
        raise ValueError(f"run directory {self.directory!r} is being written by {holder} "
                         f"(lock file {self.path!r}); wait for it to finish or stop it, or use "
                         f"another --out")

    def release(self) -> None:
        if self.held:
            self.held = False
            try:
                with open(self.path, encoding="ascii", errors="replace") as fh:
                    mine = fh.read() == self._identity()
                if mine:
                    os.unlink(self.path)
            except FileNotFoundError:
                pass


class RunDirectory:
    """Where rank 0 writes a run: locked for the whole run; with ``overwrite`` over an
    existing run, training writes beside it (``DIR.new-PID``) and the two are swapped only
    once the new run has its first checkpoint (:meth:`committed`). A replacement that fails
    before that leaves the old run untouched and its staging directory removed."""

    def __init__(self, out: str, overwrite: bool):
        self.out = out
        self.path = out
        self.staging: str | None = None
        self._locks: list[RunLock] = []
        self._overwrite = overwrite

    def open(self, check: Callable[[], None] | None = None) -> "RunDirectory":
        """Take the lock, then run ``check`` (e.g. :func:`check_out_dir` again: another
        process may have finished a run here since the first check), then prepare."""
        self._recover_siblings()
        self._locks.append(RunLock(self.out).acquire())
        if check is not None:
            try:
                check()
            except BaseException:
                self.close()
                raise
        if self._overwrite and holds_run(self.out):
            self.staging = f"{os.path.normpath(self.out)}.new-{os.getpid()}"
            shutil.rmtree(self.staging, ignore_errors=True)
            self._locks.append(RunLock(self.staging).acquire())
            self.path = self.staging
        os.makedirs(os.path.join(self.path, CHECKPOINT_DIR), exist_ok=True)
        return self

    def _recover_siblings(self) -> None:
        """Clean up after a process killed while replacing this run: its ``DIR.new-PID``
        staging directory is removed; a ``DIR.old-PID`` left by a kill between the two
        renames of :meth:`committed` is renamed back when ``DIR`` is missing (else removed)."""
        base = os.path.normpath(self.out)
        parent, name = os.path.split(base)
        try:
            siblings = os.listdir(parent or ".")
        except FileNotFoundError:
            return
        for entry in siblings:
            kind, _, pid = entry[len(name):].partition("-")
            if not entry.startswith(name) or kind not in (".new", ".old") or not pid.isdigit():
                continue
            if int(pid) != os.getpid() and _alive(int(pid), None):
                continue  # another live process is replacing this run; its lock will say so
            path = os.path.join(parent, entry)
            if kind == ".old" and not os.path.exists(base):
                os.rename(path, base)
            else:
                shutil.rmtree(path, ignore_errors=True)

    def file(self, name: str) -> str:
        return os.path.join(self.path, name)

    def committed(self) -> None:
        """The run in :attr:`path` has a checkpoint: swap it in for the old run."""
        if self.staging is None:
            return
        old = f"{os.path.normpath(self.out)}.old-{os.getpid()}"
        os.rename(self.out, old)
        os.rename(self.staging, self.out)
        self._locks[0].held = False          # its file left with the old directory
        self._locks[1].directory, self._locks[1].path = self.out, os.path.join(self.out, LOCK_FILE)
        self.path, self.staging = self.out, None
        shutil.rmtree(old, ignore_errors=True)

    def close(self) -> None:
        if self.staging is not None:          # never got a checkpoint: keep the old run
            shutil.rmtree(self.staging, ignore_errors=True)
            self.staging = None
            self._locks[1].held = False
        for lock in reversed(self._locks):
            lock.release()
        self._locks.clear()


def append_jsonl(record: dict, path: str) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
