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
from .run_dir import (CHECKPOINT_DIR, LAST_CHECKPOINT, LoadedRun, append_jsonl, check_out_dir,
                      clear_run_files)
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


def _check_resume_config(cfg: TrainConfig, saved: dict, path: str) -> None:
    diffs = [f"{k}: run has {saved.get(k)!r}, requested {getattr(cfg, k)!r}"
             for k in IDENTITY_FIELDS if saved.get(k) != getattr(cfg, k)]
    if diffs:
        raise ValueError(f"cannot resume from {path!r} with a different configuration ("
                         + "; ".join(diffs) + ")")


# --------------------------------------------------------------------------- training
class TrainCallback:
    """Hooks into :func:`train` (subclass and override what you need; all default to no-op).

    - ``on_epoch_end(epoch, record)``: after the epoch's checkpoint and metrics line are
      written (rank 0), with the epoch's record as in ``metrics.jsonl``.
    - ``before_checkpoint_replace(path, tmp_path)``: the new checkpoint is complete in
      ``tmp_path`` and about to replace ``path`` (tests kill the process here to check that
      a save is atomic).
    """

    def on_epoch_end(self, epoch: int, record: dict) -> None:
        pass

    def before_checkpoint_replace(self, path: str, tmp_path: str) -> None:
        pass


def train(cfg: TrainConfig, build_backbone: Callable | None = None,
          callbacks: Sequence[TrainCallback] = ()) -> dict:
    """Train ``cfg.head`` on ``cfg.dataset`` and write the run directory ``cfg.out``.

    Returns the summary dict (also written as ``summary.json``): status ("completed" |
    "diverged"), message, epochs_completed, runtime_s, final (flat test metrics of the
    last good epoch), config (resolved), out. Under torchrun (WORLD_SIZE > 1) the process
    group is initialised here (gloo on CPU, NCCL on GPU) unless one exists, and left up for
    later calls (:func:`shutdown_distributed` ends it); only rank 0 writes files.

    ``build_backbone(in_shape, feat_dim) -> nn.Module`` replaces the model registry (for
    library users with their own backbone; ``load_run`` then needs the same callable).
    ``callbacks``: :class:`TrainCallback` objects.
    """
    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"cfg must be a TrainConfig, got {type(cfg).__name__}")
    cfg = resolve_config(cfg)
    # The process group stays up after the run: later train() calls in the same torchrun
    # job reuse it (tearing gloo down and re-creating it per run races between ranks).
    # The CLI destroys it once at exit; library users may call shutdown_distributed().
    _init_distributed(cfg.device)
    threads = torch.get_num_threads()
    try:
        return _train(cfg, build_backbone, tuple(callbacks))
    finally:
        torch.set_num_threads(threads)


def shutdown_distributed() -> None:
    """Destroy the default process group if one is initialised (end of a torchrun job)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _train(cfg: TrainConfig, build_backbone, callbacks: tuple) -> dict:
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

    ckpt_path = os.path.join(cfg.out, CHECKPOINT_DIR, LAST_CHECKPOINT)
    ckpt = None
    if cfg.resume and os.path.exists(ckpt_path):
        ckpt = load_checkpoint(ckpt_path)
        _check_resume_config(cfg, ckpt["config"], ckpt_path)

    seed_everything(cfg.seed)
    splits = load_splits(cfg)
    x_train, y_train, x_test, y_test = splits.x_train, splits.y_train, splits.x_test, splits.y_test
    if x_train.shape[0] == 0:
        raise ValueError(f"dataset {cfg.dataset!r}: the training split is empty")
    mean = std = None
    if cfg.normalize_input:
        from unimargin.data.transforms import feature_stats

        # per feature for tabular (N, d) inputs, per channel otherwise; std 0 -> 1 (no NaN)
        mean, std = feature_stats(x_train)
    augment = None
    if cfg.augment is not False:
        from unimargin.data.transforms import default_augmentation

        augment = default_augmentation(cfg.dataset)
        if cfg.augment and augment is None:
            log(f"note: dataset {cfg.dataset!r} has no default augmentation; training without")

    # Model init happens right after seeding: a function of the seed alone.
    net = build_net(cfg, splits.in_shape, splits.num_classes, mean, std, build_backbone)
    if cfg.sync_bn and world > 1:
        net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
    net.to(device)
    head = net.head

    n_train = x_train.shape[0]
    steps_per_epoch = math.ceil(n_train / cfg.batch_size)
    optimizer = build_optimizer(parameter_groups(net, head, cfg.weight_decay), cfg.optimizer,
                                cfg.lr, cfg.momentum, cfg.nesterov)
    scheduler = build_scheduler(optimizer, epochs=cfg.epochs, steps_per_epoch=steps_per_epoch,
                                schedule=cfg.schedule, warmup_epochs=cfg.warmup_epochs,
                                milestones=cfg.milestones, gamma=cfg.gamma)

    history: list[dict] = []
    start_epoch = 0
    if ckpt is not None:
        net.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        restore_rng_state(ckpt["rng"])
        history = list(ckpt["history"])
        start_epoch = int(ckpt["epoch"])
        log(f"resuming {cfg.out} after epoch {start_epoch}")

    # Saved without the one-off actions, so config.yaml can be re-run as it is.
    resolved = dataclasses.replace(cfg, resume=False, overwrite=False).to_dict()
    data_info = {"in_shape": list(splits.in_shape), "num_classes": splits.num_classes,
                 "classes": list(splits.classes), "n_train": int(n_train),
                 "n_test": int(x_test.shape[0])}
    if main:
        os.makedirs(os.path.join(cfg.out, CHECKPOINT_DIR), exist_ok=True)
        if cfg.overwrite:
            clear_run_files(cfg.out)
            os.makedirs(os.path.join(cfg.out, CHECKPOINT_DIR), exist_ok=True)
        save_yaml(resolved, os.path.join(cfg.out, "config.yaml"))
        # The checkpoint's history is authoritative: drop lines of epochs it does not hold.
        atomic_write_jsonl(history, os.path.join(cfg.out, "metrics.jsonl"))
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

    for epoch in range(start_epoch + 1, cfg.epochs + 1):
        t_epoch = time.perf_counter()
        try:
            train_stats = _train_epoch(cfg, model, net, optimizer, scheduler, x_train, y_train,
                                       augment, epoch, steps_per_epoch, device, progress_on)
            t_train = time.perf_counter() - t_epoch
            _broadcast_buffers(net)
            bad = non_finite_state(net)
            if bad is not None:
                raise Diverged(f"parameter/buffer {bad!r} holds NaN/Inf after epoch {epoch}",
                               epoch=epoch, step=None, term=bad)
            test = _evaluate_epoch(cfg, net, x_test, y_test, epoch)
        except Diverged as exc:
            status, message = "diverged", str(exc)
            diverged_info = {"epoch": exc.epoch, "step": exc.step, "term": exc.term}
            record = {"epoch": epoch, "status": "diverged", "message": message, **diverged_info,
                      "lr": optimizer.param_groups[0]["lr"],
                      "time_s": time.perf_counter() - t_epoch}
            if main:
                append_jsonl(record, os.path.join(cfg.out, "metrics.jsonl"))
            log(f"DIVERGED: {message}. The last good checkpoint (epoch {epoch - 1}) is kept"
                + (f" in {ckpt_path}" if epoch > 1 else "; none was written") + ".")
            break
        record = {
            "epoch": epoch,
            "status": "ok",
            "lr": train_stats.pop("lr"),
            "time_s": time.perf_counter() - t_epoch,
            "train_time_s": t_train,
            "train": train_stats,
            "test": test,
        }
        history.append(record)
        if main:
            save_checkpoint({
                "model": net.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": capture_rng_state(),
                "data_order": {"seed": cfg.seed, "next_epoch": epoch + 1,
                               "generator": epoch_generator(cfg.seed, epoch + 1).get_state()},
                "epoch": epoch,
                "history": history,
                "config": resolved,
                "data": data_info,
            }, ckpt_path, before_replace=lambda tmp: [cb.before_checkpoint_replace(ckpt_path, tmp)
                                                     for cb in callbacks])
            append_jsonl(record, os.path.join(cfg.out, "metrics.jsonl"))
        if world > 1:
            dist.barrier()
        log(f"epoch {epoch}/{cfg.epochs}  loss {train_stats['loss']:.4f}  sw {test['sw']:.4f}  "
            f"uni {test['uni']:.4f}  t* {test['t_star'] if test['t_star'] is None else round(test['t_star'], 4)}"
            + (f"  b {test['learned_threshold']:.4f}  uni@b {test['uni_at_learned']:.4f}"
               if test.get("learned_threshold") is not None and test.get("uni_at_learned") is not None
               else "")
            + f"  lr {record['lr']:.3g}  {record['time_s']:.1f}s")
        for cb in callbacks:
            cb.on_epoch_end(epoch, record)

    final = dict(history[-1]["test"]) if history else {}
    if history and status == "completed" and splits.x_unknown is not None and len(splits.x_unknown):
        final.update(_open_set_final(cfg, net, splits))
    summary = {
        "status": status,
        "message": message or f"completed {len(history)} epochs",
        "epochs_completed": len(history),
        "runtime_s": time.perf_counter() - t_start,
        "final": final,
        "config": resolved,
        "out": cfg.out,
    }
    if diverged_info is not None:
        summary["diverged"] = diverged_info
    if main:
        atomic_write_json(summary, os.path.join(cfg.out, "summary.json"))
    if world > 1:
        dist.barrier()
    return summary


def _train_epoch(cfg, model, net, optimizer, scheduler, x_train, y_train, augment, epoch,
                 steps_per_epoch, device, progress_on) -> dict:
    """One pass over the training data; returns sample-weighted mean loss and terms."""
    rank, world = udist.rank(), udist.world_size()
    order = torch.randperm(x_train.shape[0], generator=epoch_generator(cfg.seed, epoch))
    aug_gen = epoch_generator(cfg.seed, epoch, STREAM_AUGMENT, rank)
    net.train()
    loss_sum = torch.zeros((), dtype=torch.float64)
    term_sums: dict[str, torch.Tensor] = {}
    count = 0
    lr_at_start = optimizer.param_groups[0]["lr"]
    steps = _progress(range(steps_per_epoch), steps_per_epoch, progress_on, f"epoch {epoch}")
    for step in steps:
        batch = order[step * cfg.batch_size:(step + 1) * cfg.batch_size]
        if world > 1:
            # Contiguous 1/P share of the *global* batch: P processes together see exactly
            # the batches one process would.
            batch = torch.tensor_split(batch, world)[rank]
        xb, yb = x_train[batch], y_train[batch]
        if augment is not None:
            xb = augment(xb, aug_gen)
        xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
        features, out = model(xb, yb)
        if out is None:
            raise Diverged(f"epoch {epoch}, step {step + 1}: features are non-finite or exceed "
                           f"max_feature_norm={cfg.max_feature_norm:g} (max norm "
                           f"{net.last_feature_norm:.4g})", epoch=epoch, step=step + 1,
                           term="features")
        check_step(out, epoch, step + 1, cfg.max_score)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        if cfg.grad_clip is not None:
            gnorm = torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
            if not bool(torch.isfinite(gnorm)):
                raise Diverged(f"epoch {epoch}, step {step + 1}: the gradient norm is {float(gnorm)}",
                               epoch=epoch, step=step + 1, term="gradient")
        optimizer.step()
        scheduler.step()
        n = yb.shape[0]
        count += n
        loss_sum += out.loss.detach().double().cpu() * n
        for k, v in out.terms.items():
            term_sums[k] = term_sums.get(k, torch.zeros((), dtype=torch.float64)) + v.double().cpu() * n
    keys = sorted(term_sums)
    packed = torch.stack([loss_sum, torch.tensor(float(count), dtype=torch.float64)]
                         + [term_sums[k] for k in keys])
    packed = udist.all_reduce_sum(packed.to(device)).cpu()
    total = float(packed[1])
    return {"loss": float(packed[0]) / total,
            "terms": {k: float(packed[2 + i]) / total for i, k in enumerate(keys)},
            "lr": lr_at_start}


def _evaluate_epoch(cfg, net, x_test, y_test, epoch: int) -> dict:
    features, scores = compute_outputs(net, net.head, x_test, cfg.eval_batch_size, distributed=True)
    check_eval_outputs(features, scores, epoch, cfg.max_feature_norm, "test")
    return evaluate_outputs(features, scores, y_test, net.head)


def _open_set_final(cfg, net, splits) -> dict:
    """Open-set keys (SPEC §3.7) of the trained net: rejection at the threshold chosen on the
    validation split (learned threshold, else t* of validation; the test split only when the
    run has no validation split), verification on the unknown classes."""
    from unimargin.metrics.evaluate import choose_threshold, open_set_metrics

    if splits.x_val is not None and len(splits.x_val):
        _, val_scores = compute_outputs(net, net.head, splits.x_val, cfg.eval_batch_size,
                                        distributed=True)
        threshold, source = choose_threshold(net.head, val_scores, splits.y_val, "validation")
    else:
        threshold = source = None
    _, test_scores = compute_outputs(net, net.head, splits.x_test, cfg.eval_batch_size,
                                     distributed=True)
    if threshold is None:
        threshold, source = choose_threshold(net.head, test_scores, splits.y_test, "test")
    uf, us = compute_outputs(net, net.head, splits.x_unknown, cfg.eval_batch_size, distributed=True)
    return open_set_metrics(net.head, test_scores, splits.y_test, uf, us, splits.y_unknown,
                            threshold, source)


def evaluate_run(run: LoadedRun, x: torch.Tensor, labels: torch.Tensor,
                 batch_size: int = 1024) -> dict:
    """Flat metrics (SPEC §3) of a loaded run on ``x``, ``labels``."""
    features, scores = compute_outputs(run.model, run.head, x, batch_size)
    return evaluate_outputs(features, scores, labels, run.head)
