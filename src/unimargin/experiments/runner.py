"""The run grid shared by ``compare``, ``sweep`` (and ``tune``): train many runs, in worker
processes, reuse finished ones, write ``records.json``.

Guarantees (docs/reliability.md):

- Workers die with the parent. Each worker asks the kernel for SIGKILL when its parent dies
  (``prctl(PR_SET_PDEATHSIG)``, Linux) and also runs a watchdog thread that exits when the
  parent pid changes (any OS). A parent interrupted by SIGINT/SIGTERM kills its workers
  before it exits. A rerun with ``reuse=True`` then finishes the grid.
- Reuse is safe: a run is reused only when its ``summary.json`` says completed/diverged, the
  config that defines what it trains is unchanged, its data fingerprint
  (:func:`data_fingerprint`) is unchanged and (completed runs) its checkpoint loads.
  Anything else retrains.
- ``records.json`` is rewritten atomically after every finished run; run paths in it are
  relative to the experiment directory, so the directory can be moved.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from unimargin.io import atomic_write_json
from unimargin.report.records import (COMPLETED, DIVERGED, FAILED, RunOutputs, RunRecord, read_history,
                                     record_from_summary)

__all__ = [
    "RunTask",
    "run_tasks",
    "train_task",
    "data_fingerprint",
    "write_records",
    "check_overrides",
    "base_training_options",
    "load_eval_data",
    "run_outputs",
    "plan_devices",
    "pin_device",
    "rerun_command",
    "Progress",
    "format_duration",
    "metrics_text",
    "epoch_summary",
    "FINGERPRINT_FILE",
    "HASH_LIMIT_BYTES",
]

FINGERPRINT_FILE = "data_fingerprint.json"
# Files up to this size are hashed (SHA-256); larger ones are identified by size + mtime.
HASH_LIMIT_BYTES = 64 * 2 ** 20


@dataclass
class RunTask:
    """One run of a grid. ``options`` are TrainConfig fields shared by the grid; ``head``,
    ``seed``, ``head_params`` and ``run_dir`` make it this run; ``label`` names it in logs
    (e.g. "lmdl seed 1"); ``device`` overrides the device (one per worker, issue 16)."""

    options: dict[str, Any]
    head: str
    seed: int
    head_params: dict[str, Any]
    run_dir: str
    reuse: bool = False
    label: str = ""
    device: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def config(self):
        from unimargin.train import TrainConfig

        options = dict(self.options)
        options.update(head=self.head, seed=self.seed, out=str(self.run_dir),
                       head_params=dict(self.head_params), overwrite=True, resume=False)
        if self.device is not None:
            options["device"] = self.device
        return TrainConfig.from_dict(options, source=self.label or "experiment")


# --------------------------------------------------------------------------- options
def check_overrides(overrides: dict[str, Any]) -> None:
    """Every override must be a TrainConfig field (shared by compare and sweep)."""
    from unimargin.train.config import config_fields

    unknown = sorted(set(overrides) - set(config_fields()))
    if unknown:
        raise ValueError(f"overrides: unknown training option(s) {unknown}; valid: {sorted(config_fields())}")


def base_training_options(overrides: dict[str, Any], dataset: str, epochs: int) -> dict[str, Any]:
    """The options every run of a compare or sweep shares."""
    base = dict(overrides, dataset=dataset, epochs=epochs)
    base.setdefault("quiet", True)
    # One thread per run unless told otherwise: the small default models train several times
    # faster single-threaded, and several threads on a shared 2-core machine oversubscribe it.
    base.setdefault("num_threads", 1)
    return base


def load_eval_data(base: dict[str, Any]):
    """The dataset splits the engine trains and evaluates on (``load_splits`` applies
    ``limit_train`` / ``limit_test`` exactly as training does)."""
    from unimargin.train import TrainConfig, load_splits

    return load_splits(TrainConfig.from_dict(dict(base, head="softmax"), source="experiment"))


# --------------------------------------------------------------------------- fingerprint
def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def data_fingerprint(options: dict[str, Any], hash_limit: int = HASH_LIMIT_BYTES) -> dict[str, Any]:
    """What identifies the data of a run: the dataset name and, for every file under
    ``data_dir`` (a file or a directory), its path relative to ``data_dir``, size, mtime (ns)
    and SHA-256 when the file is at most ``hash_limit`` bytes. Built-in datasets without
    ``data_dir`` are identified by their name (their generator is versioned with the code)."""
    out: dict[str, Any] = {"dataset": options.get("dataset"), "files": []}
    data_dir = options.get("data_dir")
    if not data_dir:
        return out
    root = Path(data_dir)
    if root.is_file():
        paths, base = [root], root.parent
    elif root.is_dir():
        paths, base = sorted(p for p in root.rglob("*") if p.is_file()), root
    else:
        out["missing"] = str(root)
        return out
    for path in paths:
        stat = path.stat()
        entry = {"path": str(path.relative_to(base)), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        if stat.st_size <= hash_limit:
            entry["sha256"] = _sha256(path)
        out["files"].append(entry)
    return out


def _same_data(saved: dict[str, Any] | None, current: dict[str, Any]) -> bool:
    """Equal fingerprints; hashed files compare by content (an mtime change alone, e.g. a
    copy, does not force a retrain), others by size + mtime."""
    if not saved or saved.get("dataset") != current.get("dataset") or "missing" in current:
        return False
    a, b = saved.get("files", []), current.get("files", [])
    if [f["path"] for f in a] != [f["path"] for f in b]:
        return False
    for old, new in zip(a, b):
        if old["size"] != new["size"]:
            return False
        if "sha256" in old and "sha256" in new:
            if old["sha256"] != new["sha256"]:
                return False
        elif old.get("mtime_ns") != new.get("mtime_ns"):
            return False
    return True


# --------------------------------------------------------------------------- reuse
def _reusable_summary(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / "summary.json"
    if not path.exists():
        return None
    try:
        summary = json.loads(path.read_text())
    except (json.JSONDecodeError, OSError):
        return None
    return summary if summary.get("status") in (COMPLETED, DIVERGED) else None


# Options the engine picks from the data when the run leaves them unset (train/engine.py,
# _adapt_to_data: batch size and warm-up on small data). The saved config holds the picked
# value; with the same data (fingerprint) and the same other fields it picks the same again.
_ADAPTED_BY_DATA = ("batch_size", "warmup_epochs")


def _changed_fields(cfg, saved: dict[str, Any]) -> list[str]:
    """Fields defining what a run trains (IDENTITY_FIELDS + epochs) that differ between the
    requested config (resolved now) and a saved run's resolved config. ``data_dir`` is
    compared by the data fingerprint instead (a moved data directory is the same data);
    fields the engine adapts to the data are compared only when the request sets them."""
    from unimargin.train.config import IDENTITY_FIELDS, resolve_config

    resolved = resolve_config(cfg)

    def normal(value):
        return json.dumps(value, sort_keys=True, default=str)

    skip = {"data_dir"} | {name for name in _ADAPTED_BY_DATA if getattr(cfg, name) is None}
    return [name for name in (*IDENTITY_FIELDS, "epochs")
            if name not in skip and normal(getattr(resolved, name)) != normal(saved.get(name))]


def _checkpoint_loads(run_dir: Path) -> str | None:
    """None when the run's checkpoint loads, else why not."""
    from unimargin.train import load_run

    try:
        load_run(run_dir)
    except (ValueError, OSError) as error:
        return str(error)
    return None


def _reuse_record(task: RunTask, cfg, fingerprint: dict[str, Any], log) -> RunRecord | None:
    run_dir = Path(task.run_dir)
    summary = _reusable_summary(run_dir)
    if summary is None:
        return None
    changed = _changed_fields(cfg, summary.get("config") or {})
    if changed:
        log(f"[run] {task.label}: saved run differs in {changed}; retraining")
        return None
    try:
        saved_fingerprint = json.loads((run_dir / FINGERPRINT_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        saved_fingerprint = None
    if not _same_data(saved_fingerprint, fingerprint):
        log(f"[run] {task.label}: data changed since the saved run (or no fingerprint); retraining")
        return None
    if summary.get("status") == COMPLETED:
        problem = _checkpoint_loads(run_dir)
        if problem is not None:
            log(f"[run] {task.label}: checkpoint does not load ({problem}); retraining")
            return None
    record = _record(task, summary)
    record.reused = True
    return record


def _record(task: RunTask, summary: dict[str, Any]) -> RunRecord:
    """The record of a run: history read from the run directory as it is now."""
    return record_from_summary(task.head, task.seed, summary, run_dir=Path(task.run_dir))


# --------------------------------------------------------------------------- one run
def epoch_summary(epoch: int, record: dict) -> dict[str, Any]:
    """What a progress line shows of an engine epoch record (metrics.jsonl row, CONTRACT.md):
    validation sw/uni, train loss, status. Small, so it is cheap to send between processes."""
    val = record.get("val") if isinstance(record.get("val"), dict) else {}
    train = record.get("train") if isinstance(record.get("train"), dict) else {}
    return {"epoch": epoch, "status": record.get("status", "ok"),
            "val": {k: val.get(k) for k in ("sw", "uni")}, "loss": train.get("loss")}


def _epoch_callback(emit: Callable[[str, Any], None]):
    """A :class:`unimargin.train.TrainCallback` reporting ``emit("epoch", epoch_summary)``."""
    from unimargin.train import TrainCallback

    class EpochEvents(TrainCallback):
        def on_epoch_end(self, epoch: int, record: dict) -> None:
            emit("epoch", epoch_summary(epoch, record))

    return EpochEvents()


def _no_events(kind: str, payload: Any) -> None:
    pass


def train_task(task: RunTask, log: Callable[[str], None],
               emit: Callable[[str, Any], None] = _no_events) -> RunRecord:
    """Train (or reuse) one run; a crash inside it gives a ``failed`` record, a configuration
    error (ValueError/TypeError) propagates (it is the user's to fix). ``emit(kind, payload)``
    reports progress: ``("start", None)`` when training begins (not for a reused run), then
    ``("epoch", epoch_summary)`` after every epoch."""
    from unimargin.train import train

    cfg = task.config()
    fingerprint = data_fingerprint(task.options)
    if task.reuse:
        record = _reuse_record(task, cfg, fingerprint, log)
        if record is not None:
            return record
    emit("start", None)
    started = time.perf_counter()
    try:
        summary = train(cfg, callbacks=[_epoch_callback(emit)])
    except (ValueError, TypeError):
        raise
    except Exception as error:  # one crashed run must not lose the others
        log(f"[run] {task.label} FAILED: {type(error).__name__}: {error}")
        return RunRecord(head=task.head, seed=task.seed, status=FAILED,
                         message=f"{type(error).__name__}: {error}",
                         runtime_s=time.perf_counter() - started, out=str(task.run_dir),
                         history=read_history(task.run_dir))
    atomic_write_json(fingerprint, Path(task.run_dir) / FINGERPRINT_FILE)
    return _record(task, summary)


# --------------------------------------------------------------------------- workers
def _set_parent_death_signal() -> bool:
    """Linux: SIGKILL this process when its parent dies (prctl PR_SET_PDEATHSIG = 1)."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(1, int(signal.SIGKILL), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(parent_pid: int, interval: float = 0.5) -> None:
    """Any OS: exit when the parent is gone (we were re-parented)."""
    while True:
        if os.getppid() != parent_pid:
            os._exit(1)
        time.sleep(interval)


def pin_device(device: str | None, environ=os.environ) -> None:
    """Make ``cuda:N`` this process's only visible GPU (``CUDA_VISIBLE_DEVICES=N``), so runs
    keep ``device: cuda`` in their config (what is trained does not depend on the slot).
    Must run before CUDA initialises: the worker initializer calls it first."""
    if device is not None and device.startswith("cuda:"):
        environ["CUDA_VISIBLE_DEVICES"] = device.split(":", 1)[1]


def plugin_modules(tasks: Sequence[RunTask]) -> list[str]:
    """Modules outside the package that registered a head or dataset the tasks use. A
    spawned worker imports them first, so heads and datasets registered by the user's own
    module (``@unimargin.register_head``, ``@register_dataset``) train in workers too."""
    from unimargin.data import dataset_info
    from unimargin.heads import build_head

    names = set()
    params = {task.head: task.head_params for task in tasks}
    for head, head_params in params.items():
        # heads/ has no public name -> class lookup; a small head built with the run's
        # hyper-parameters is cheap and names the module that registered it.
        names.add(type(build_head(head, 2, 4, **head_params)).__module__)
    for task in tasks:
        names.add(dataset_info(task.options.get("dataset", "mnist1d")).loader.__module__)
    # __main__ is re-run by spawn itself (as __mp_main__).
    return sorted(n for n in names if n.split(".")[0] != "unimargin" and n not in ("__main__", "__mp_main__"))


# Worker-process state set by _worker_init: the parent's event queue (progress and log
# lines travel through it, so the parent prints everything in order, around its bar).
_EVENTS = None


def _worker_init(parent_pid: int, devices=None, modules: Sequence[str] = (), events=None) -> None:
    import importlib

    global _EVENTS
    _set_parent_death_signal()
    if devices is not None:
        pin_device(devices.get())
    for name in modules:
        importlib.import_module(name)
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()
    # Ctrl-C goes to the whole foreground process group: the parent handles it and kills us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _EVENTS = events


def _worker_entry(index: int, task: RunTask) -> RunRecord:
    events = _EVENTS

    def emit(kind: str, payload: Any) -> None:
        # SimpleQueue.put writes to the pipe before returning (no feeder thread): every
        # event of this run is readable in the parent before the run's result is.
        events.put((index, kind, payload))

    return train_task(task, lambda message: emit("log", message), emit)


def plan_devices(device: str | None, jobs: int, count: int | None = None) -> list[str | None]:
    """One device per worker slot: ``--device cuda`` with N visible GPUs gives
    cuda:0, cuda:1, ... cycled over ``jobs`` slots; anything else gives None (each run's
    own ``device`` option applies).
    ``count`` = the number of CUDA devices (default ``torch.cuda.device_count()``)."""
    if device != "cuda":
        return [None] * jobs
    if count is None:
        import torch

        count = torch.cuda.device_count()
    if count < 1:
        raise ValueError("device: 'cuda' requested but no CUDA device is visible")
    return [f"cuda:{slot % count}" for slot in range(jobs)]


def _kill_workers(pool) -> None:
    processes = list(getattr(pool, "_processes", {}).values())
    for process in processes:
        if process.is_alive():
            process.kill()
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.join(timeout=5)


def run_tasks(tasks: Sequence[RunTask], jobs: int, on_record: Callable[[int, RunRecord], None],
              log: Callable[[str], None], cost: Callable[[RunTask], float] | None = None,
              devices: Sequence[str | None] | None = None,
              on_event: Callable[[int, str, Any], None] | None = None,
              on_idle: Callable[[], None] | None = None) -> list[RunRecord]:
    """Train every task, ``jobs`` at a time; returns the records in task order.

    Runs are independent and seeded, so results do not depend on ``jobs`` or the order.
    Parallel runs use spawned processes (a forked child of a process that already ran
    OpenMP code can hang) that die with the parent. Tasks are started longest first
    (``cost``, default the number of epochs) so the last runs do not leave a core idle.
    ``on_record(index, record)`` is called in the parent as each run finishes;
    ``on_event(index, kind, payload)`` (:func:`train_task`'s "start" / "epoch" events) in
    the parent as they happen, before that run's ``on_record``; workers' log lines reach
    ``log`` in the parent. ``devices`` (:func:`plan_devices`): worker i sees only GPU
    ``devices[i]`` (:func:`pin_device`). ``on_idle()`` is called once in the parent, with
    ``jobs`` > 1, as soon as a worker has no task left while others still train (the last
    runs leave a core free: 9 runs on 2 workers leave one idle for a whole run): the caller
    does work it would otherwise do after the grid there. It is an optimisation only, not
    called when no worker ever idles before the end, so callers must not depend on it.
    """
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs: expected a positive integer, got {jobs!r}")
    on_event = on_event or (lambda index, kind, payload: None)
    records: list[RunRecord | None] = [None] * len(tasks)
    if jobs == 1 or len(tasks) <= 1:
        for index, task in enumerate(tasks):
            records[index] = train_task(task, log, lambda kind, payload, i=index: on_event(i, kind, payload))
            on_record(index, records[index])
        return records  # type: ignore[return-value]
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    cost = cost or (lambda task: float(task.options.get("epochs") or 0))
    order = sorted(range(len(tasks)), key=lambda i: -cost(tasks[i]))  # stable: ties keep grid order
    workers = min(jobs, len(tasks))
    context = multiprocessing.get_context("spawn")
    device_queue = None
    if devices and any(d is not None for d in devices):
        device_queue = context.Queue()
        for slot in range(workers):
            device_queue.put(devices[slot % len(devices)])
    events = context.SimpleQueue()

    def drain() -> None:
        while not events.empty():
            index, kind, payload = events.get()
            if kind == "log":
                log(payload)
            else:
                on_event(index, kind, payload)

    pool = ProcessPoolExecutor(max_workers=workers, mp_context=context,
                               initializer=_worker_init,
                               initargs=(os.getpid(), device_queue, plugin_modules(tasks), events))
    previous_term = signal.getsignal(signal.SIGTERM)

    def on_term(signum, frame):  # SIGTERM: stop like Ctrl-C (workers are killed below)
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_term)
    try:
        futures = {pool.submit(_worker_entry, i, tasks[i]): i for i in order}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
            drain()
            for future in done:
                index = futures[future]
                records[index] = future.result()
                on_record(index, records[index])
            if on_idle is not None and 0 < len(pending) < workers:
                # fewer unfinished tasks than workers: at least one worker (a core) is free
                on_idle, idle = None, on_idle
                idle()
    except BaseException:
        _kill_workers(pool)
        raise
    finally:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, previous_term)
    pool.shutdown(wait=True)
    drain()
    return records  # type: ignore[return-value]


# --------------------------------------------------------------------------- progress
class Progress:
    """Progress of a grid (issue 12), printed through ``log``:

    - ``run k/N: LABEL`` when run k (grid order) starts training;
    - ``run k/N LABEL: epoch e/E, val sw 93.12% uni 90.00%, loss 0.4321 (elapsed 12s, ~1m05s left)``
      after every epoch (validation split, CONTRACT.md), or, with ``bar``, a tqdm bar over
      the grid's epochs on a terminal instead of these lines;
    - ``run k/N LABEL: completed in 21.3 s, test sw 93.12% uni 90.00% (5/12 done, ...)``
      when it ends (``reused`` for a run taken from an earlier invocation).

    Numbers are percentages with 2 decimals. The time left is the time since the first run
    started training × epochs still to train / epochs trained in this invocation (reused
    runs count as done; a diverged run's remaining epochs are dropped).
    Call :meth:`event` with :func:`run_tasks`'s events and :meth:`finished` with its records.
    """

    def __init__(self, tasks: Sequence[RunTask], log: Callable[[str], None], bar: bool = False,
                 what: str = "runs"):
        self.tasks = list(tasks)
        self.log = log
        self.what = what
        self.started_at = time.perf_counter()
        self.done: set[int] = set()
        self._epochs = [int(t.options.get("epochs") or 0) for t in self.tasks]
        self._seen = [0] * len(self.tasks)
        self._trained = 0  # epochs trained in this invocation
        self._first_start: float | None = None
        self._bar = None
        if bar:
            try:
                from tqdm import tqdm
            except ImportError:  # tqdm is the optional [progress] extra: lines instead
                tqdm = None
            if tqdm is not None:
                import shutil

                # shutil falls back to $COLUMNS / 80 where a terminal reports width 0
                self._bar = tqdm(total=sum(self._epochs), unit="epoch", leave=False, file=sys.stderr,
                                 ncols=max(40, shutil.get_terminal_size().columns - 1))

    # ------------------------------------------------------------------ output
    def write(self, message: str) -> None:
        """A log line that does not break the bar."""
        if self._bar is not None:
            self._bar.write(message, file=sys.stderr)
        else:
            self.log(message)

    def _name(self, index: int) -> str:
        return f"run {index + 1}/{len(self.tasks)}"

    def _left(self) -> int:
        return sum(e - s for e, s in zip(self._epochs, self._seen))

    def timing(self) -> str:
        now = time.perf_counter()
        elapsed = now - self.started_at
        if self._trained == 0 or self._first_start is None:
            return f"elapsed {format_duration(elapsed)}"
        # the rate since the first run started training: worker start-up is not training
        left = (now - self._first_start) * self._left() / self._trained
        return f"elapsed {format_duration(elapsed)}, ~{format_duration(left)} left"

    # ------------------------------------------------------------------ events
    def event(self, index: int, kind: str, payload: Any) -> None:
        if kind == "start":
            if self._first_start is None:
                self._first_start = time.perf_counter()
            self.write(f"{self._name(index)}: {self.tasks[index].label}")
        elif kind == "epoch":
            self._seen[index] = min(self._epochs[index], self._seen[index] + 1)
            self._trained += 1
            epoch = payload.get("epoch", "?")
            text = metrics_text(payload.get("val") or {}, "val")
            if isinstance(payload.get("loss"), (int, float)):
                text += f", loss {payload['loss']:.4f}"
            if payload.get("status") not in (None, "ok"):
                text += f", {payload['status']}"
            if self._bar is not None:
                self._bar.update(1)
                self._bar.set_postfix_str(f"{self.tasks[index].label} epoch {epoch}: {text}", refresh=True)
            else:
                self.write(f"{self._name(index)} {self.tasks[index].label}: epoch {epoch}/{self._epochs[index]}, "
                           f"{text} ({self.timing()})")

    def finished(self, index: int, record: RunRecord) -> None:
        self.done.add(index)
        if self._bar is not None:
            self._bar.update(self._epochs[index] - self._seen[index])
        self._seen[index] = self._epochs[index]  # diverged/failed/reused: nothing more to train
        what = (f"reused ({record.status} earlier)" if record.reused
                else f"{record.status} in {format_duration(record.runtime_s)}")
        self.write(f"{self._name(index)} {self.tasks[index].label}: {what}, {metrics_text(record.final, 'test')} "
                   f"({len(self.done)}/{len(self.tasks)} {self.what} done, {self.timing()})")

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.close()


def format_duration(seconds: float) -> str:
    """``"8.4s"`` under a minute, ``"2m05s"``, ``"1h02m"``."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    seconds = int(round(seconds))
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def metrics_text(metrics: dict[str, Any], split: str) -> str:
    """``"val sw 93.12% uni 90.00%"``: sw and uni in % with 2 decimals (``-`` when absent)."""
    parts = []
    for key in ("sw", "uni"):
        value = metrics.get(key)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value == value
        parts.append(f"{key} {100.0 * value:.2f}%" if ok else f"{key} -")
    return f"{split} " + " ".join(parts)


# --------------------------------------------------------------------------- records
def write_records(out: Path, records: Sequence[RunRecord]) -> None:
    """``out/records.json`` atomically; each run's ``out`` relative to ``out``."""
    rows = []
    for record in records:
        row = record.to_json()
        if row.get("out"):
            try:
                row["out"] = os.path.relpath(Path(row["out"]).resolve(), Path(out).resolve())
            except ValueError:  # another drive (Windows)
                pass
        rows.append(row)
    atomic_write_json(rows, Path(out) / "records.json")


def run_outputs(run_dir: str | Path, x_test, y_test, head_name: str = "", seed: int = 0) -> RunOutputs:
    """Load a finished run and compute its test outputs for the plots. Open-set metrics are
    not recomputed here: the engine records them (``summary.json`` "final", threshold chosen
    on the validation split) and :func:`unimargin.report.records.record_from_summary` files
    them under ``open_set``."""
    from unimargin.metrics import centroid_margins, uniform_accuracy
    from unimargin.metrics.evaluate import compute_outputs
    from unimargin.train import load_run

    loaded = load_run(run_dir)
    features, scores = compute_outputs(loaded.model, loaded.head, x_test)
    head = loaded.head
    margins = None
    decision = head.linear_decision()
    if decision is not None:
        weight, bias = decision
        margins = centroid_margins(features, y_test, weight.detach().float().cpu(), bias.detach().float().cpu())
    learned = head.threshold
    return RunOutputs(head=head_name or head.name, seed=seed, features=features, scores=scores, labels=y_test,
                      t_star=float(uniform_accuracy(scores, y_test).threshold),
                      learned_threshold=None if learned is None else float(learned),
                      centroid_margins=margins)


# --------------------------------------------------------------------------- rerun command
def _flag_parts(key: str, value: Any) -> list[str]:
    """The flags `unimargin.cli.options` generates for TrainConfig field ``key``."""
    flag = "--" + key.replace("_", "-")
    if value is None:
        return []
    if value is True:
        return [flag]
    if value is False:
        return ["--no-" + key.replace("_", "-")]
    if isinstance(value, (list, tuple)):
        return [flag, ",".join(str(v) for v in value)]
    if isinstance(value, dict):
        parts: list[str] = []
        for sub_key, sub_value in value.items():
            parts += [flag, f"{sub_key}={sub_value}"]
        return parts
    return [flag, str(value)]


def rerun_command(name: str, flags: dict[str, Any], overrides: dict[str, Any], out: Path) -> str:
    """The exact command that reruns this compare/sweep, every setting explicit. Training
    options are flags (compare and sweep accept every TrainConfig flag); fields marked
    ``cli: False`` in their metadata go to ``out/<name>_options.yaml`` passed with --config."""
    import dataclasses
    import shlex

    from unimargin.train import TrainConfig

    no_flag = {f.name for f in dataclasses.fields(TrainConfig) if f.metadata.get("cli") is False}
    parts = ["unimargin", name]
    for key, value in flags.items():
        parts += _flag_parts(key, value)
    extra = {k: v for k, v in overrides.items() if k in no_flag}
    for key, value in overrides.items():
        if key not in no_flag and key != "quiet":
            parts += _flag_parts(key, value)
    if extra:
        from unimargin.train.config import save_yaml

        path = Path(out) / f"{name}_options.yaml"
        save_yaml(extra, path)
        parts += ["--config", str(path)]
    return shlex.join(parts)
