"""The training engine: fit / evaluate loop, checkpoints, resume, torchrun, divergence guard.

DESIGN.md "Training engine" and "Distributed". One ``nn.Module`` (:class:`UnimarginNet`)
holds input standardisation, backbone and head, so DistributedDataParallel wraps all of
them and head parameters (e.g. the bce-u bias) are synchronised like any other.

Reproducibility: the data order of epoch e is ``randperm(N, epoch_generator(seed, e))``,
a pure function of (seed, e); everything else that is random (model init, dropout) uses
the global generators, whose states are saved in every checkpoint. On CPU a run resumed
from the checkpoint of epoch k therefore ends bitwise identical to the uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from typing import Callable, Sequence

import torch
import torch.distributed as dist
from torch import nn

from unimargin import distributed as udist
from unimargin.io import atomic_write_json, atomic_write_jsonl
from unimargin.metrics.evaluate import compute_outputs, evaluate_outputs

from .checkpoint import load_checkpoint, save_checkpoint
from .config import IDENTITY_FIELDS, TrainConfig, resolve_config, save_yaml
from .guards import Diverged, check_eval_outputs, check_step, non_finite_state
from .net import build_net
from .optim import build_optimizer, build_scheduler, parameter_groups
from .run_dir import (BEST_CHECKPOINT, CHECKPOINT_DIR, LAST_CHECKPOINT, LoadedRun, RunDirectory,
                      append_jsonl, check_out_dir, checkpoint_path)
from .seeding import (STREAM_AUGMENT, capture_rng_state, epoch_generator, restore_rng_state,
                      seed_everything)


# Data-group fields of TrainConfig that are not reading options of load_dataset (the engine
# applies them itself).
_ENGINE_DATA_FIELDS = {"dataset", "limit_train", "limit_test", "normalize_input", "augment",
                       "imbalance", "label_noise"}


def load_splits(cfg: TrainConfig):
    """The dataset of a resolved config: every data option of the config is passed to
    :func:`unimargin.data.load_dataset` (unset ones as None = the dataset's default), the
    validation split is carved out of the training data with the run seed (SPEC §3.9; the
    same split for every head of a seed), then ``limit_train`` / ``limit_test`` apply."""
    from unimargin.data import load_dataset

    options = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)
               if f.metadata.get("group") == "data" and f.name not in _ENGINE_DATA_FIELDS}
    options["val_seed"] = cfg.seed
    splits = load_dataset(cfg.dataset, **options)
    # data conditions (issue 15) touch the training split only: validation and test stay
    # clean and balanced
    if cfg.imbalance is not None:
        from unimargin.data.conditions import long_tail_indices

        keep = torch.from_numpy(long_tail_indices(splits.y_train, cfg.imbalance, cfg.seed))
        splits.x_train, splits.y_train = splits.x_train[keep], splits.y_train[keep]
    if cfg.label_noise:
        from unimargin.data.conditions import symmetric_label_noise

        splits.y_train = symmetric_label_noise(splits.y_train, cfg.label_noise, splits.num_classes,
                                               cfg.seed)
    if cfg.limit_train is not None:
        splits.x_train, splits.y_train = splits.x_train[:cfg.limit_train], splits.y_train[:cfg.limit_train]
    if cfg.limit_test is not None:
        splits.x_test, splits.y_test = splits.x_test[:cfg.limit_test], splits.y_test[:cfg.limit_test]
    return splits


# --------------------------------------------------------------------------- helpers
class _Log:
    """Plain log lines on stderr (rank 0 only, silent with quiet)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled

    def __call__(self, msg: str) -> None:
        if self.enabled:
            print(msg, file=sys.stderr, flush=True)


def _init_distributed(device_pref: str) -> bool:
    """Initialise torch.distributed from torchrun's environment. Returns True when this
    call created the process group."""
    if dist.is_available() and dist.is_initialized():
        return False
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    use_cuda = torch.cuda.is_available() and device_pref != "cpu"
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return True


def _device(pref: str) -> torch.device:
    if pref == "cpu" or (pref == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError("device: 'cuda' requested but CUDA is not available")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))


def _broadcast_buffers(module: nn.Module) -> None:
    """Make every process hold rank 0's buffers (BN running stats drift per process
    between DDP's per-forward broadcasts), so evaluation and checkpoints agree."""
    if udist.is_distributed():
        for b in module.buffers():
            dist.broadcast(b, src=0)


def _progress(iterable, total: int, enabled: bool, desc: str):
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True)


def _check_resume_config(cfg: TrainConfig, saved: dict, path: str, completed: int) -> None:
    """A resumed run continues the same training: identity fields equal; ``epochs`` may not
    drop below the epochs already trained, and may change only where the schedule does not
    depend on it (so config.yaml stays true of every epoch trained)."""
    diffs = [f"{k}: run has {saved.get(k)!r}, requested {getattr(cfg, k)!r}"
             for k in IDENTITY_FIELDS if saved.get(k) != getattr(cfg, k)]
    if diffs:
        raise ValueError(f"cannot resume from {path!r} with a different configuration ("
                         + "; ".join(diffs) + ")")
    if cfg.epochs < completed:
        raise ValueError(f"--resume --epochs {cfg.epochs}: the run in {path!r} has already "
                         f"trained {completed} epochs; a resumed run cannot be shortened")
    if cfg.epochs != saved.get("epochs") and cfg.schedule == "cosine":
        raise ValueError(f"--resume --epochs {cfg.epochs}: the run was trained with a cosine "
                         f"schedule over {saved.get('epochs')} epochs, which depends on the "
                         f"number of epochs; resume with --epochs {saved.get('epochs')} or "
                         f"train a new run")


def auto_batch_size(n_train: int) -> int:
    """The default batch: 128, halved (by powers of two, never below 8) until an epoch has
    at least 8 steps, so a small training split still gets several updates per epoch."""
    batch = 128
    while batch > 8 and n_train < 8 * batch:
        batch //= 2
    return batch


def _adapt_to_data(cfg: TrainConfig, n_train: int, explicit: set, log) -> TrainConfig:
    """Small-data sense (said once): the batch and the warm-up the user did not set follow
    the data; values the user set are kept, with a warning when they defeat themselves."""
    changes = {}
    if cfg.batch_size is None:
        changes["batch_size"] = auto_batch_size(n_train)
        if changes["batch_size"] != 128:
            log(f"note: {n_train} training samples: batch size {changes['batch_size']} (the "
                f"default 128 would give {math.ceil(n_train / 128)} step(s) per epoch); set "
                f"--batch-size to choose")
    elif cfg.batch_size >= n_train:
        log(f"warning: --batch-size {cfg.batch_size} is at least the {n_train} training "
            f"samples: one optimiser step per epoch")
    if cfg.warmup_epochs and cfg.warmup_epochs >= cfg.epochs:
        if "warmup_epochs" in explicit:
            log(f"warning: --warmup-epochs {cfg.warmup_epochs:g} covers the whole "
                f"{cfg.epochs}-epoch run: the learning rate never reaches its set value")
        else:
            changes["warmup_epochs"] = round(cfg.epochs * 0.2, 3)
            log(f"note: the head's {cfg.warmup_epochs:g} warm-up epochs would cover the "
                f"{cfg.epochs}-epoch run; warming up for {changes['warmup_epochs']:g} "
                f"epochs instead (set --warmup-epochs to choose)")
    return dataclasses.replace(cfg, **changes) if changes else cfg


def plan_batches(n_train: int, batch_size: int, world: int, min_share: int) -> list[tuple[int, int]]:
    """[start, stop) of each step's global batch over one epoch's order.

    Every process's share (``tensor_split`` into ``world`` parts, the smallest is
    ``size // world``) must hold at least ``min_share`` samples (2 with BatchNorm: batch
    statistics of one sample are undefined). A remainder too small for that joins the
    previous batch (that step is larger; no sample is dropped). Raises ValueError before
    training when even full batches are too small.
    """
    if batch_size // world < min_share:
        raise ValueError(f"batch_size {batch_size} over {world} process(es) gives "
                         f"{batch_size // world} sample(s) per process; the model has "
                         f"BatchNorm, which needs at least {min_share}: use --batch-size >= "
                         f"{min_share * world}")
    bounds = [(start, min(start + batch_size, n_train)) for start in range(0, n_train, batch_size)]
    last = bounds[-1][1] - bounds[-1][0]
    if last // world < min_share:
        if len(bounds) == 1:
            raise ValueError(f"{n_train} training samples over {world} process(es) give "
                             f"{last // world} sample(s) per process; BatchNorm needs at "
                             f"least {min_share}")
        bounds[-2:] = [(bounds[-2][0], n_train)]
    return bounds


def _has_batchnorm(module: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in module.modules())


def _check_eval_split(name: str, y: torch.Tensor | None, dataset: str) -> None:
    """A validation or test split with one class gives no SW/Uni worth choosing with."""
    if y is None or not len(y):
        return
    if int(torch.unique(y).numel()) < 2:
        raise ValueError(f"dataset {dataset!r}: the {name} split holds only class "
                         f"{int(y[0])}; it needs at least 2 classes (more data, or another "
                         f"split option: --val-fraction, --test-fraction, --test-data)")


# --------------------------------------------------------------------------- process setup
# glibc's malloc hands freed blocks above its mmap threshold (128 KiB at start, raised by
# itself up to 32 MiB) back to the kernel and trims the top of its heap. A training step
# frees and re-allocates the same activation buffers every step, so each step faulted them
# back in as fresh zeroed pages: ~50 000 minor page faults per epoch of the default
# MNIST-1D run, ~15 % of its CPU time (docs/benchmarks.md). Keeping freed memory for reuse
# removes them. Only where memory comes from changes, not the arithmetic: results are
# bit-identical (tests/train/test_engine.py).
MMAP_THRESHOLD_BYTES = 64 * 2 ** 20
TRIM_THRESHOLD_BYTES = 256 * 2 ** 20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc <malloc.h>
_allocator_kept = False


def keep_freed_memory() -> bool:
    """Linux with glibc: ``mallopt(M_MMAP_THRESHOLD, 64 MiB)`` and ``mallopt(M_TRIM_THRESHOLD,
    256 MiB)`` in this process (once; :func:`train` calls it), so buffers up to 64 MiB come
    from the heap and up to 256 MiB of freed heap is kept for reuse instead of being
    returned to the kernel and faulted back in on the next step. The process's resident
    memory then stays near its peak. Returns True when the settings are in effect; a no-op
    returning False on other C libraries and systems, and when the environment variable
    ``UNIMARGIN_KEEP_FREED_MEMORY=0`` opts out (the settings are process-wide, so a program
    that embeds :func:`train` and manages its own allocator can keep glibc's defaults)."""
    global _allocator_kept
    if _allocator_kept:
        return True
    if os.environ.get("UNIMARGIN_KEEP_FREED_MEMORY", "1").strip() == "0":
        return False
    import platform

    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    import ctypes

    libc = ctypes.CDLL(None)
    _allocator_kept = bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
                           and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
    return _allocator_kept


# --------------------------------------------------------------------------- training
class TrainCallback:
    """Hooks into :func:`train` (subclass and override what you need; all default to no-op).

    - ``on_epoch_end(epoch, record)``: after the epoch's checkpoint and metrics line are
      written (rank 0), with the epoch's record as in ``metrics.jsonl``.
    - ``before_checkpoint_replace(path, tmp_path)``: the new checkpoint is complete in
      ``tmp_path`` and about to replace ``path`` (tests kill the process here to check that
      a save is atomic).
    - ``on_validation_scores(epoch, scores, labels)``: the epoch's validation scores (every
      process under torchrun; e.g. :mod:`unimargin.train.tensorboard` histograms them).
    - ``close()``: the run has ended, normally or not.
    """

    def on_epoch_end(self, epoch: int, record: dict) -> None:
        pass

    def before_checkpoint_replace(self, path: str, tmp_path: str) -> None:
        pass

    def on_validation_scores(self, epoch: int, scores: torch.Tensor, labels: torch.Tensor) -> None:
        """The epoch's validation scores (N×K) and labels, before ``on_epoch_end``."""

    def close(self) -> None:
        """The run has ended (also after an error)."""


def train(cfg: TrainConfig, build_backbone: Callable | None = None,
          callbacks: Sequence[TrainCallback] = ()) -> dict:
    """Train ``cfg.head`` on ``cfg.dataset`` and write the run directory ``cfg.out``.

    Protocol (SPEC §3.9): per-epoch metrics on the validation split; the epoch kept
    (``select_epoch``: last, or best by validation ``select_metric``) is evaluated on the
    test split once, at the end. Returns the summary dict (also ``summary.json``): status
    ("completed" | "diverged"), message, epochs_completed, selected_epoch, runtime_s,
    final (flat test metrics of the kept model, incl. ``uni_deployed`` at validation t*,
    and the open-set keys when classes were held out), final_val (its validation metrics),
    per_class (test confusion), splits (sizes), config (resolved), out. Under torchrun
    (WORLD_SIZE > 1) the process group is initialised here (gloo on CPU, NCCL on GPU)
    unless one exists, and left up for later calls (:func:`shutdown_distributed` ends it);
    only rank 0 writes files.

    ``build_backbone(in_shape, feat_dim) -> nn.Module`` replaces the model registry (for
    library users with their own backbone; ``load_run`` then needs the same callable).
    ``callbacks``: :class:`TrainCallback` objects.
    """
    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"cfg must be a TrainConfig, got {type(cfg).__name__}")
    explicit = {name for name in ("batch_size", "warmup_epochs") if getattr(cfg, name) is not None}
    cfg = resolve_config(cfg)
    keep_freed_memory()
    # The process group stays up after the run: later train() calls in the same torchrun
    # job reuse it (tearing gloo down and re-creating it per run races between ranks).
    # The CLI destroys it once at exit; library users may call shutdown_distributed().
    _init_distributed(cfg.device)
    threads = torch.get_num_threads()
    try:
        return _train(cfg, build_backbone, tuple(callbacks), explicit)
    finally:
        torch.set_num_threads(threads)


def shutdown_distributed() -> None:
    """Destroy the default process group if one is initialised (end of a torchrun job)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _load_data(cfg: TrainConfig):
    splits = load_splits(cfg)
    if splits.x_train.shape[0] == 0:
        raise ValueError(f"dataset {cfg.dataset!r}: the training split is empty")
    _check_eval_split("validation", splits.y_val, cfg.dataset)
    _check_eval_split("test", splits.y_test, cfg.dataset)
    return splits


def _train(cfg: TrainConfig, build_backbone, callbacks: tuple, explicit: set) -> dict:
    t_start = time.perf_counter()
    main = udist.is_main_process()
    world = udist.world_size()
    log = _Log(main and not cfg.quiet)
    if cfg.num_threads is not None:
        torch.set_num_threads(cfg.num_threads)
    check_out_dir(cfg)
    device = _device(cfg.device)
    if cfg.sync_bn and world > 1 and device.type != "cuda":
        raise ValueError("sync_bn: SyncBatchNorm needs CUDA devices; on CPU each process "
                         "keeps its own BatchNorm batch statistics (see docs/training.md)")

    seed_everything(cfg.seed)
    splits = _load_data(cfg)
    n_train = splits.x_train.shape[0]
    cfg = _adapt_to_data(cfg, n_train, explicit, log)
    ckpt = None
    if cfg.resume:
        ckpt = load_checkpoint(checkpoint_path(cfg.out))
        _check_resume_config(cfg, ckpt["config"], checkpoint_path(cfg.out), int(ckpt["epoch"]))

    mean = std = None
    if cfg.normalize_input:
        from unimargin.data.transforms import feature_stats

        # per feature for tabular (N, d) inputs, per channel otherwise; std 0 -> 1 (no NaN)
        mean, std = feature_stats(splits.x_train)
    augment = None
    if cfg.augment is not False:
        from unimargin.data.transforms import default_augmentation

        augment = default_augmentation(cfg.dataset)
        if cfg.augment and augment is None:
            log(f"note: dataset {cfg.dataset!r} has no default augmentation; training without")

    # Model init happens right after seeding and data loading: a function of the seed alone.
    net = build_net(cfg, splits.in_shape, splits.num_classes, mean, std, build_backbone)
    batches = plan_batches(n_train, cfg.batch_size, world, 2 if _has_batchnorm(net) else 1)
    if cfg.sync_bn and world > 1:
        net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
    net.to(device)
    optimizer = build_optimizer(parameter_groups(net, net.head, cfg.weight_decay), cfg.optimizer,
                                cfg.lr, cfg.momentum, cfg.nesterov)
    scheduler = build_scheduler(optimizer, epochs=cfg.epochs, steps_per_epoch=len(batches),
                                schedule=cfg.schedule, warmup_epochs=cfg.warmup_epochs,
                                milestones=cfg.milestones, gamma=cfg.gamma)
    # fp16: loss scaling keeps small float16 gradients from flushing to zero (CUDA's use)
    scaler = torch.amp.GradScaler(device.type) if cfg.fp16 else None
    history: list[dict] = []
    if ckpt is not None:
        net.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        if scaler is not None and ckpt.get("grad_scaler"):
            scaler.load_state_dict(ckpt["grad_scaler"])
        restore_rng_state(ckpt["rng"])
        history = list(ckpt["history"])
        log(f"resuming {cfg.out} after epoch {int(ckpt['epoch'])}")

    run_dir = RunDirectory(cfg.out, cfg.overwrite) if main else None
    try:
        if run_dir is not None:
            run_dir.open(check=lambda: check_out_dir(cfg))
            if cfg.tensorboard:
                from .tensorboard import TensorBoardCallback

                callbacks = callbacks + (TensorBoardCallback(run_dir.file("tensorboard")),)
        return _fit(cfg, net, optimizer, scheduler, splits, batches, augment, history, device,
                    run_dir, callbacks, log, t_start, scaler)
    finally:
        for cb in callbacks:
            cb.close()
        if run_dir is not None:
            run_dir.close()


class _Fit:
    """State of one fit shared by the loop's helpers (rank 0 writes through ``run_dir``)."""

    def __init__(self, cfg, net, optimizer, scheduler, splits, run_dir, callbacks, scaler=None):
        self.cfg, self.net, self.optimizer, self.scheduler = cfg, net, optimizer, scheduler
        self.scaler = scaler
        self.splits, self.run_dir, self.callbacks = splits, run_dir, callbacks
        # saved without the one-off actions, so config.yaml can be re-run as it is
        self.resolved = dataclasses.replace(cfg, resume=False, overwrite=False).to_dict()
        self.data_info = {"in_shape": list(splits.in_shape), "num_classes": splits.num_classes,
                          "classes": list(splits.classes), "n_train": int(splits.x_train.shape[0]),
                          "n_val": 0 if splits.x_val is None else int(splits.x_val.shape[0]),
                          "n_test": int(splits.x_test.shape[0])}

    def checkpoint(self, name: str, history: list, epoch: int, extra: dict | None = None) -> None:
        path = self.run_dir.file(os.path.join(CHECKPOINT_DIR, name))
        save_checkpoint({
            "model": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": capture_rng_state(),
            "data_order": {"seed": self.cfg.seed, "next_epoch": epoch + 1,
                           "generator": epoch_generator(self.cfg.seed, epoch + 1).get_state()},
            "epoch": epoch,
            "history": history,
            "config": self.resolved,
            "data": self.data_info,
            "preprocessing": dict(self.splits.preprocessing),
            **({"grad_scaler": self.scaler.state_dict()} if self.scaler is not None else {}),
            **(extra or {}),
        }, path, before_replace=lambda tmp: [cb.before_checkpoint_replace(path, tmp)
                                             for cb in self.callbacks])


def _is_better(value, best) -> bool:
    return value is not None and (best is None or value > best)


def _fit(cfg, net, optimizer, scheduler, splits, batches, augment, history, device, run_dir,
         callbacks, log, t_start, scaler=None) -> dict:
    main, world = run_dir is not None, udist.world_size()
    fit = _Fit(cfg, net, optimizer, scheduler, splits, run_dir, callbacks, scaler)
    if main:
        save_yaml(fit.resolved, run_dir.file("config.yaml"))
        # The checkpoint's history is authoritative: drop lines of epochs it does not hold.
        atomic_write_jsonl(history, run_dir.file("metrics.jsonl"))
    if world > 1:
        dist.barrier()
    model = net
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(net, device_ids=[device.index] if device.type == "cuda" else None)

    progress_on = main and not cfg.quiet and sys.stderr.isatty()
    status, message, diverged_info = "completed", "", None
    log(f"training {cfg.head} on {cfg.dataset} ({cfg.model}, feat_dim {cfg.feat_dim}) for "
        f"{cfg.epochs} epochs: {cfg.optimizer} lr {cfg.lr}, batch {cfg.batch_size}"
        + (f", {world} processes" if world > 1 else ""))
    has_val = splits.x_val is not None and len(splits.x_val) > 0
    best_epoch, best_value = _best_so_far(history, cfg.select_metric)
    for epoch in range(len(history) + 1, cfg.epochs + 1):
        t_epoch = time.perf_counter()
        try:
            train_stats = _train_epoch(cfg, model, net, optimizer, scheduler, splits.x_train,
                                       splits.y_train, augment, epoch, batches, device, progress_on,
                                       scaler)
            t_train = time.perf_counter() - t_epoch
            _broadcast_buffers(net)
            bad = non_finite_state(net)
            if bad is not None:
                raise Diverged(f"parameter/buffer {bad!r} holds NaN/Inf after epoch {epoch}",
                               epoch=epoch, step=None, term=bad)
            evaluate_now = has_val and (epoch % cfg.eval_every == 0 or epoch == cfg.epochs)
            val = (_evaluate_split(cfg, net, splits.x_val, splits.y_val, epoch, "validation",
                                   callbacks) if evaluate_now else None)
        except Diverged as exc:
            status, message = "diverged", str(exc)
            diverged_info = {"epoch": exc.epoch, "step": exc.step, "term": exc.term}
            record = {"epoch": epoch, "status": "diverged", "message": message, **diverged_info,
                      "lr": optimizer.param_groups[0]["lr"],
                      "time_s": time.perf_counter() - t_epoch}
            if main:
                append_jsonl(record, run_dir.file("metrics.jsonl"))
            log(f"DIVERGED: {message}. The last good checkpoint (epoch {epoch - 1}) is kept"
                + (f" in {run_dir.file(os.path.join(CHECKPOINT_DIR, LAST_CHECKPOINT))}"
                   if main and epoch > 1 else "; none was written") + ".")
            break
        record = {"epoch": epoch, "status": "ok", "lr": train_stats.pop("lr"),
                  "time_s": time.perf_counter() - t_epoch, "train_time_s": t_train,
                  "train": train_stats, "val": val}
        history.append(record)
        improved = val is not None and _is_better(val.get(cfg.select_metric), best_value)
        if improved:
            best_epoch, best_value = epoch, val[cfg.select_metric]
        if main:
            if cfg.select_epoch == "best" and improved:
                fit.checkpoint(BEST_CHECKPOINT, history, epoch)
            fit.checkpoint(LAST_CHECKPOINT, history, epoch)
            run_dir.committed()  # --overwrite: the new run now replaces the old one
            append_jsonl(record, run_dir.file("metrics.jsonl"))
        if world > 1:
            dist.barrier()
        log(_epoch_line(cfg, epoch, train_stats, val, record))
        for cb in callbacks:
            cb.on_epoch_end(epoch, record)

    summary = {"status": status,
               "message": message or f"completed {len(history)} epochs",
               "epochs_completed": len(history), "select_epoch": cfg.select_epoch}
    if history and status == "completed":
        summary.update(_final_evaluation(fit, history, best_epoch, has_val, log))
    summary.update({"runtime_s": time.perf_counter() - t_start, "config": fit.resolved,
                    "out": cfg.out})
    if diverged_info is not None:
        summary["diverged"] = diverged_info
    if main:
        atomic_write_json(summary, run_dir.file("summary.json"))
    if world > 1:
        dist.barrier()
    return summary


def _best_so_far(history: list, metric: str) -> tuple[int | None, float | None]:
    best_epoch = best_value = None
    for rec in history:
        value = (rec.get("val") or {}).get(metric)
        if _is_better(value, best_value):
            best_epoch, best_value = rec["epoch"], value
    return best_epoch, best_value


def _epoch_line(cfg, epoch: int, train_stats: dict, val: dict | None, record: dict) -> str:
    line = f"epoch {epoch}/{cfg.epochs}  loss {train_stats['loss']:.4f}"
    if val is not None:
        line += f"  val sw {100 * val['sw']:.2f}%  uni {100 * val['uni']:.2f}%"
        if val.get("t_star") is not None:
            line += f"  t* {val['t_star']:.4g}"
        if val.get("learned_threshold") is not None and val.get("uni_at_learned") is not None:
            line += f"  b {val['learned_threshold']:.4g}  uni@b {100 * val['uni_at_learned']:.2f}%"
    return line + f"  lr {record['lr']:.3g}  {record['time_s']:.1f}s"


def _final_evaluation(fit: _Fit, history: list, best_epoch, has_val: bool, log) -> dict:
    """The test split, once: the kept model (SPEC §3.9), its deployed threshold (t* of the
    validation split), per-class confusion, open-set keys, and the training class means
    stored with the model (SPEC §2.9 ``centroid_cosine``)."""
    from unimargin.metrics.confusion import per_class_summary, predictions
    from unimargin.metrics.rejection import class_means as compute_class_means
    cfg, net, splits = fit.cfg, fit.net, fit.splits
    selected = history[-1]["epoch"]
    if cfg.select_epoch == "best" and best_epoch is not None and best_epoch != selected:
        best_path = (fit.run_dir.file(os.path.join(CHECKPOINT_DIR, BEST_CHECKPOINT))
                     if fit.run_dir is not None else None)
        state = _load_best_state(best_path, cfg)
        net.load_state_dict(state)
        selected = best_epoch
    kept_val = dict(next(r for r in history if r["epoch"] == selected).get("val") or {})
    # the kept epoch was evaluated on validation (the last epoch always is, "best" chooses
    # among evaluated ones): its t* is the deployed threshold, no second validation pass
    deployed = kept_val.get("t_star") if has_val else None
    features, scores = compute_outputs(net, net.head, splits.x_test, cfg.eval_batch_size,
                                       distributed=True)
    check_eval_outputs(features, scores, selected, cfg.max_feature_norm, "test")
    final = evaluate_outputs(features, scores, splits.y_test, net.head, deployed_threshold=deployed)
    preds = predictions(scores, splits.y_test)
    per_class = {"classes": [str(c) for c in splits.classes],
                 **per_class_summary(splits.y_test, preds, splits.num_classes)}
    train_features, _ = compute_outputs(net, net.head, splits.x_train, cfg.eval_batch_size,
                                        distributed=True)
    means = compute_class_means(train_features, splits.y_train, splits.num_classes).float()
    if splits.x_unknown is not None and len(splits.x_unknown):
        final.update(_open_set_final(cfg, net, splits, features, scores, means, has_val))
    if fit.run_dir is not None:
        # the kept model, its class means and the selection, in the file load_run reads
        name = BEST_CHECKPOINT if cfg.select_epoch == "best" and best_epoch is not None else LAST_CHECKPOINT
        entry = next(r for r in history if r["epoch"] == selected)
        fit.checkpoint(name, history[:history.index(entry) + 1] if name == BEST_CHECKPOINT else history,
                       selected, {"class_means": means, "selected_epoch": selected})
    log(f"kept epoch {selected} ({cfg.select_epoch}); test sw {100 * final['sw']:.2f}%  "
        f"uni {100 * final['uni']:.2f}%"
        + (f"  deployed uni {100 * final['uni_deployed']:.2f}% (t* of validation)"
           if final.get("uni_deployed") is not None else ""))
    return {"selected_epoch": selected, "final": final,
            "final_val": kept_val,
            "per_class": per_class,
            "splits": {**{k: v for k, v in fit.data_info.items() if k.startswith("n_")},
                       "n_unknown": 0 if splits.x_unknown is None else int(len(splits.x_unknown))}}


def _open_set_final(cfg, net, splits, test_features, test_scores, class_means, has_val) -> dict:
    """Open-set keys (SPEC §3.7, §2.9) of the kept net from the test outputs already
    computed; every threshold is chosen on the validation split (metrics.evaluate)."""
    from unimargin.metrics.evaluate import SplitOutputs, open_set_keys

    def outputs(x, y):
        f, s = compute_outputs(net, net.head, x, cfg.eval_batch_size, distributed=True)
        return SplitOutputs(f, s, y)

    val = outputs(splits.x_val, splits.y_val) if has_val else None
    return open_set_keys(net.head, SplitOutputs(test_features, test_scores, splits.y_test),
                         outputs(splits.x_unknown, splits.y_unknown), val, class_means)


def _load_best_state(path: str | None, cfg) -> dict:
    """The best epoch's model state (rank 0 reads it; other processes receive it)."""
    state = load_checkpoint(path)["model"] if path is not None else None
    if udist.is_distributed():
        box = [state]
        dist.broadcast_object_list(box, src=0)
        state = box[0]
    return state


def _train_epoch(cfg, model, net, optimizer, scheduler, x_train, y_train, augment, epoch,
                 batches, device, progress_on, scaler=None) -> dict:
    """One pass over the training data (``batches`` from :func:`plan_batches`); returns the
    sample-weighted mean loss and terms. The head validates the values of its inputs on the
    first step of the epoch only (``Head.validate``): the checks read values back to the
    host, which would stall a GPU on every step; shapes are checked on every step."""
    rank, world = udist.rank(), udist.world_size()
    order = torch.randperm(x_train.shape[0], generator=epoch_generator(cfg.seed, epoch))
    aug_gen = epoch_generator(cfg.seed, epoch, STREAM_AUGMENT, rank)
    net.train()
    loss_sum = torch.zeros((), dtype=torch.float64)
    term_sums: dict[str, torch.Tensor] = {}
    count = 0
    lr_at_start = optimizer.param_groups[0]["lr"]
    steps = _progress(range(len(batches)), len(batches), progress_on, f"epoch {epoch}")
    try:
        for step in steps:
            net.head.validate = step == 0
            batch = order[batches[step][0]:batches[step][1]]
            if world > 1:
                # Contiguous 1/P share of the *global* batch: P processes together see
                # exactly the batches one process would.
                batch = torch.tensor_split(batch, world)[rank]
            xb, yb = x_train[batch], y_train[batch]
            if augment is not None:
                xb = augment(xb, aug_gen)
            xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
            features, out = model(xb, yb)
            if out is None:
                raise Diverged(f"epoch {epoch}, step {step + 1}: features are non-finite or "
                               f"exceed max_feature_norm={cfg.max_feature_norm:g} (max norm "
                               f"{net.last_feature_norm:.4g})", epoch=epoch, step=step + 1,
                               term="features")
            check_step(out, epoch, step + 1, cfg.max_score)
            optimizer.zero_grad(set_to_none=True)
            _backward_and_step(cfg, net, optimizer, out.loss, scaler, epoch, step)
            scheduler.step()
            n = yb.shape[0]
            count += n
            loss_sum += out.loss.detach().double().cpu() * n
            for k, v in out.terms.items():
                term_sums[k] = term_sums.get(k, torch.zeros((), dtype=torch.float64)) + v.double().cpu() * n
    finally:
        net.head.validate = True
    keys = sorted(term_sums)
    packed = torch.stack([loss_sum, torch.tensor(float(count), dtype=torch.float64)]
                         + [term_sums[k] for k in keys])
    packed = udist.all_reduce_sum(packed.to(device)).cpu()
    total = float(packed[1])
    return {"loss": float(packed[0]) / total,
            "terms": {k: float(packed[2 + i]) / total for i, k in enumerate(keys)},
            "lr": lr_at_start}


def _backward_and_step(cfg, net, optimizer, loss, scaler, epoch: int, step: int) -> None:
    """Backward, optional clipping, optimiser step (through the fp16 gradient scaler, which
    skips steps whose scaled gradients overflowed instead of diverging)."""
    if scaler is None:
        loss.backward()
    else:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    if cfg.grad_clip is not None:
        gnorm = torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
        if scaler is None and not bool(torch.isfinite(gnorm)):
            raise Diverged(f"epoch {epoch}, step {step + 1}: the gradient norm is {float(gnorm)}",
                           epoch=epoch, step=step + 1, term="gradient")
    if scaler is None:
        optimizer.step()
    else:
        scaler.step(optimizer)
        scaler.update()


def _evaluate_split(cfg, net, x, y, epoch: int, split: str, callbacks=()) -> dict:
    features, scores = compute_outputs(net, net.head, x, cfg.eval_batch_size, distributed=True)
    check_eval_outputs(features, scores, epoch, cfg.max_feature_norm, split)
    for cb in callbacks:
        cb.on_validation_scores(epoch, scores, y)
    return evaluate_outputs(features, scores, y, net.head)


def evaluate_run(run: LoadedRun, x: torch.Tensor, labels: torch.Tensor,
                 batch_size: int = 1024) -> dict:
    """Flat metrics (SPEC §3) of a loaded run on ``x``, ``labels``."""
    features, scores = compute_outputs(run.model, run.head, x, batch_size)
    return evaluate_outputs(features, scores, labels, run.head)
