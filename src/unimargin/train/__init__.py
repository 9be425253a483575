"""Training engine (DESIGN.md "Training engine", "Distributed"): docs/training.md.

>>> from unimargin.train import TrainConfig, train
>>> summary = train(TrainConfig(dataset="mnist1d", head="lmdl", epochs=5, out="runs/lmdl"))
"""

from unimargin.heads import recommended_settings
from unimargin.io import atomic_write_bytes
from unimargin.metrics.evaluate import compute_outputs, evaluate_outputs

from .checkpoint import load_checkpoint, save_checkpoint
from .config import TrainConfig, load_yaml, merge, resolve_config, validate_config
from .engine import TrainCallback, evaluate_run, load_splits, shutdown_distributed, train
from .guards import Diverged
from .net import UnimarginNet, build_net
from .run_dir import LoadedRun, load_run
from .optim import build_optimizer, build_scheduler, parameter_groups
from .seeding import capture_rng_state, epoch_generator, restore_rng_state, seed_everything

__all__ = [
    "TrainConfig", "load_yaml", "merge", "resolve_config", "validate_config",
    "recommended_settings",
    "train", "TrainCallback", "Diverged", "load_run", "LoadedRun", "UnimarginNet", "build_net", "evaluate_run", "load_splits",
    "shutdown_distributed",
    "compute_outputs", "evaluate_outputs",
    "save_checkpoint", "load_checkpoint", "atomic_write_bytes",
    "parameter_groups", "build_optimizer", "build_scheduler",
    "seed_everything", "epoch_generator", "capture_rng_state", "restore_rng_state",
]
