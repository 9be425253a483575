"""Training configuration: one flat dataclass, YAML load/merge, validation.

Precedence (lowest to highest): dataclass defaults < the head's recommended optimiser
settings (registered with the head, ``unimargin.heads.recommended_settings``; only for optimiser fields left ``None``) < a YAML file <
command-line flags. :func:`resolve_config` fills the ``None`` optimiser fields and checks
every value; the resolved dict is what ``config.yaml`` in the run directory holds.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from typing import Any

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "multistep", "constant")
DEVICES = ("auto", "cpu", "cuda")

# Optimiser fields that default to the head's recommended settings when left None.
OPTIMIZER_FIELDS = ("optimizer", "lr", "momentum", "nesterov", "weight_decay", "schedule",
                    "warmup_epochs")

# Fields that define *what* is trained; a resumed run must agree on all of them.
IDENTITY_FIELDS = ("dataset", "data_dir", "unknown_classes", "model", "feat_dim", "head",
                   "head_params", "batch_size", "optimizer", "lr", "momentum", "nesterov",
                   "weight_decay", "schedule", "milestones", "gamma", "warmup_epochs",
                   "grad_clip", "seed", "normalize_input", "augment", "limit_train",
                   "limit_test", "bf16", "fp16", "channels_last", "sync_bn", "label_column", "test_data", "image_size",
                   "resize", "channels", "test_fraction", "val_fraction", "imbalance", "label_noise",
                   "select_epoch", "select_metric")
SELECT_EPOCHS = ("last", "best")
SELECT_METRICS = ("sw", "cw", "uni")


def _opt(default, help: str, group: str, *, choices: tuple | None = None, cli: bool = True,
         factory=None):
    """A TrainConfig field with the metadata the CLI flags are generated from
    (``unimargin.cli.options``): help, choices, group (data / model / optim / run), cli."""
    meta = {"help": help, "choices": choices, "group": group, "cli": cli}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    """Everything a training run depends on (DESIGN.md "Training engine").

    Optimiser fields left ``None`` take the head's recommended settings
    (:func:`unimargin.heads.recommended_settings`). ``batch_size`` is the *global* batch:
    under torchrun each of P processes gets a contiguous 1/P share of every batch.
    """

    # data
    dataset: str = _opt("mnist1d", "dataset name (unimargin.data.list_datasets())", "data")
    data_dir: str | None = _opt(None, "directory (or file) the dataset is read from", "data")
    unknown_classes: list | None = _opt(
        None, "comma-separated class names or indices held out of training (open set, SPEC 3.7)",
        "data")
    limit_train: int | None = _opt(None, "use the first N training samples (after the seeded "
                                   "splits)", "data")
    limit_test: int | None = _opt(None, "use the first N test samples", "data")
    normalize_input: bool = _opt(True, "standardise inputs with training-set statistics (per "
                                 "feature for tabular data, per channel otherwise)", "data")
    augment: bool | None = _opt(None, "training augmentation (default: the dataset's own)", "data")
    # data: reading options (None = the dataset's default; load_dataset refuses an option the
    # chosen dataset does not take, see unimargin.data.dataset_info(name).options)
    label_column: str | None = field(default=None, metadata={
        "help": "csv: name of the label column (default: the last column)",
        "choices": None, "group": "data", "cli": True})
    test_data: str | None = field(default=None, metadata={
        "help": "csv: a second CSV file with the same columns used as the test split",
        "choices": None, "group": "data", "cli": True})
    image_size: str | None = field(default=None, metadata={
        "help": "folder: resize images to H or H,W pixels (default: all images must share one size)",
        "choices": None, "group": "data", "cli": True})
    resize: str | None = field(default=None, metadata={
        "help": "folder: how --image-size is reached: crop (default; scale to cover, then "
                "center-crop, keeps the aspect ratio) or stretch",
        "choices": ("crop", "stretch"), "group": "data", "cli": True})
    channels: int | None = field(default=None, metadata={
        "help": "folder: 1 (grayscale) or 3 (RGB); default: 1 when every image is grayscale",
        "choices": (1, 3), "group": "data", "cli": True})
    test_fraction: float | None = field(default=None, metadata={
        "help": "digits/folder/npz/csv without a test split of their own: stratified test fraction "
                "(default 0.2, digits 0.25)",
        "choices": None, "group": "data", "cli": True})
    val_fraction: float = field(default=0.1, metadata={
        "help": "fraction of the training data held out (stratified, seeded by --seed) as the "
                "validation split, unless the dataset has its own (SPEC 3.9)",
        "choices": None, "group": "data", "cli": True})
    # data conditions, training split only (issue 15; unimargin.data.conditions)
    imbalance: float | None = field(default=None, metadata={
        "help": "long-tailed training set: class c keeps n*RHO^(c/(K-1)) samples (0 < RHO <= 1)",
        "choices": None, "group": "data", "cli": True})
    label_noise: float | None = field(default=None, metadata={
        "help": "symmetric label noise: each training label becomes a uniformly drawn other "
                "class with probability P",
        "choices": None, "group": "data", "cli": True})
    # model
    model: str | None = _opt(None, "backbone name or package.module:factory (default: the "
                             "dataset's default model)", "model")
    feat_dim: int = _opt(64, "feature dimension d", "model")
    head: str = _opt("softmax", "head name (unimargin.list_heads())", "model")
    head_params: dict = _opt(None, "head hyper-parameter NAME=VALUE (repeatable)", "model",
                             factory=dict)
    sync_bn: bool = _opt(False, "convert BatchNorm to SyncBatchNorm under torchrun (CUDA)", "model")
    # optimisation (None = the head's recommended settings)
    epochs: int = _opt(10, "training epochs", "optim")
    batch_size: int | None = _opt(None, "global batch size, split over torchrun processes "
                                  "(default: 128, smaller when the training split is small: "
                                  "at least 8 steps per epoch, never below 8)", "optim")
    optimizer: str | None = _opt(None, "optimizer (default: the head's recommended)", "optim",
                                 choices=OPTIMIZERS)
    lr: float | None = _opt(None, "learning rate (default: the head's recommended)", "optim")
    momentum: float | None = _opt(None, "SGD momentum / AdamW beta1", "optim")
    nesterov: bool | None = _opt(None, "Nesterov momentum (SGD)", "optim")
    weight_decay: float | None = _opt(None, "weight decay (never on bce biases)", "optim")
    schedule: str | None = _opt(None, "learning-rate schedule", "optim", choices=SCHEDULES)
    milestones: list[int] | None = _opt(None, "epochs of the multistep schedule (comma-separated)",
                                        "optim")
    gamma: float = _opt(0.1, "multistep decay factor", "optim")
    warmup_epochs: float | None = _opt(None, "linear warm-up length in epochs", "optim")
    grad_clip: float | None = _opt(None, "clip the global gradient L2 norm to this value", "optim")
    bf16: bool = _opt(False, "autocast the backbone to bfloat16 (head maths stays float32)", "optim")
    fp16: bool = _opt(False, "autocast the backbone to float16 with a gradient scaler (for CUDA; "
                      "head maths stays float32)", "optim")
    channels_last: bool | None = _opt(None, "channels-last memory format for 2-D conv backbones "
                                      "(default: on for image models; not bit-identical to off)",
                                      "optim")
    # divergence guard (engine safety limits, not SPEC)
    max_feature_norm: float = _opt(1e4, "stop as diverged when a feature norm exceeds this", "run")
    max_score: float = _opt(1e6, "stop as diverged when a score exceeds this in magnitude", "run")
    # run
    seed: int = _opt(0, "run seed (model init, data order, validation split)", "run")
    out: str = _opt("runs/train", "run directory", "run")
    resume: bool = _opt(False, "continue the run in --out from its last checkpoint", "run")
    overwrite: bool = _opt(False, "replace the run in --out", "run")
    quiet: bool = _opt(False, "no progress output", "run")
    device: str = _opt("auto", "device", "run", choices=DEVICES)
    eval_batch_size: int = _opt(256, "evaluation batch size (256 keeps a batch's activations "
                                "in the CPU cache: faster than 1024, identical results)", "run")
    eval_every: int = _opt(1, "evaluate the validation split every N epochs (and after the "
                           "last); --select-epoch best chooses among the evaluated epochs", "run")
    select_epoch: str = _opt("last", "the epoch whose model is kept and tested: the last one, "
                             "or the best on the validation split by --select-metric", "run",
                             choices=SELECT_EPOCHS)
    select_metric: str = _opt("sw", "validation metric that picks the best epoch", "run",
                              choices=SELECT_METRICS)
    tensorboard: bool = _opt(False, "also write TensorBoard event files (DIR/tensorboard; "
                             "needs unimargin[tensorboard])", "run")
    num_threads: int | None = _opt(None, "torch intra-op threads", "run")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> "TrainConfig":
        """Build from a mapping; unknown keys raise ValueError naming them and ``source``."""
        if not isinstance(data, dict):
            raise ValueError(f"{source}: expected a mapping of option: value, got "
                             f"{type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"{source}: unknown option(s) {unknown}; valid options: "
                             f"{sorted(names)}")
        return cls(**{k: v for k, v in data.items()})


def config_fields() -> list[str]:
    return [f.name for f in dataclasses.fields(TrainConfig)]


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML mapping; unreadable or invalid files raise ValueError naming the file."""
    try:
        import yaml
    except ImportError as exc:  # optional extra "config"
        raise ValueError("reading YAML configs needs pyyaml: pip install 'unimargin[config]'"
                         ) from exc
    path = os.fspath(path)
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise ValueError(f"cannot read config file {path!r}: {exc.strerror or exc}") from exc
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"config file {path!r} is not UTF-8 text (byte {exc.start}: "
                         f"{raw[exc.start:exc.start + 1]!r}); save it as UTF-8") from exc
    try:
        data = yaml.load(text, Loader=_unique_key_loader(yaml))
    except yaml.YAMLError as exc:
        raise ValueError(f"config file {path!r} is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"config file {path!r}: expected a mapping of option: value at the "
                         f"top level, got {type(data).__name__}")
    # Accept dashed keys as written on the command line.
    return {str(k).replace("-", "_"): _normalise_yaml(v) for k, v in data.items()}


def _unique_key_loader(yaml):
    """A SafeLoader that refuses a mapping with the same key twice (plain YAML keeps the
    last one silently)."""

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            seen = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key!r} (first at line "
                        f"{seen[key].start_mark.line + 1})", key_node.start_mark)
                seen[key] = key_node
            return super().construct_mapping(node, deep=deep)

    return UniqueKeyLoader


def _normalise_yaml(value: Any) -> Any:
    """YAML 1.1 reads ``1e-3`` (no dot) as a string; give such numbers the value
    :func:`parse_value` gives them on the command line, so flags and files agree."""
    if isinstance(value, dict):
        return {k: _normalise_yaml(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_normalise_yaml(v) for v in value]
    if isinstance(value, str):
        parsed = parse_value(value)
        return parsed if isinstance(parsed, (int, float)) and not isinstance(parsed, bool) else value
    return value


def save_yaml(data: dict[str, Any], path: str | os.PathLike) -> None:
    """Write ``data`` as YAML atomically (temp file + rename)."""
    import yaml

    from unimargin.io import atomic_write_bytes

    text = yaml.safe_dump(data, sort_keys=False, default_flow_style=None)
    atomic_write_bytes(text.encode("utf-8"), path)


_NUMBER = None  # compiled lazily by parse_value


def parse_value(text: Any) -> Any:
    """THE scalar parser for NAME=VALUE flags, sweep values and YAML strings: ints, floats
    (including ``1e-3``, which YAML 1.1 reads as a string), true/false, null/none, else the
    string itself (stripped). Non-strings are returned unchanged."""
    global _NUMBER
    if not isinstance(text, str):
        return text
    import re

    if _NUMBER is None:
        _NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?|[+-]?(inf|nan)", re.IGNORECASE)
    value = text.strip()
    lowered = value.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("null", "none", "~"):
        return None
    if re.fullmatch(r"[+-]?\d+", value):
        return int(value)
    if _NUMBER.fullmatch(value):
        return float(value)
    return value


def parse_assignments(items, allow_head_prefix: bool = False, option: str = "--head-param") -> dict[str, Any]:
    """``["NAME=VALUE", ...]`` -> {name: value} (values through :func:`parse_value`); with
    ``allow_head_prefix`` every item is ``HEAD:NAME=VALUE`` -> {head: {name: value}}.
    A malformed item raises ValueError naming ``option`` and the expected form."""
    out: dict[str, Any] = {}
    for item in items or ():
        text = str(item)
        head = None
        if allow_head_prefix:
            head, sep, text = text.partition(":")
            if not sep or not head.strip():
                raise ValueError(f"{option}: expected HEAD:NAME=VALUE (e.g. lmdl:delta_d=3), got {item!r}")
            head = head.strip()
        name, eq, raw = text.partition("=")
        if not eq or not name.strip():
            form = "HEAD:NAME=VALUE (e.g. lmdl:delta_d=3)" if allow_head_prefix else "NAME=VALUE (e.g. delta_d=3)"
            raise ValueError(f"{option}: expected {form}, got {item!r}")
        target = out.setdefault(head, {}) if head is not None else out
        target[name.strip()] = parse_value(raw)
    return out


def merge(base: dict[str, Any], *overrides: dict[str, Any]) -> dict[str, Any]:
    """Later mappings win; ``None`` values in an override mean "not given"."""
    out = dict(base)
    for ov in overrides:
        out.update({k: v for k, v in ov.items() if v is not None})
    return out


def _check_number(name, value, *, integer=False, minimum=None, strict=False, maximum=None,
                  allow_none=False):
    if value is None:
        if allow_none:
            return
        raise ValueError(f"{name}: a value is required")
    ok_type = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, ok_type):
        kind = "an integer" if integer else "a number"
        raise ValueError(f"{name}: expected {kind}, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name}: expected a finite number, got {value!r}")
    if minimum is not None and (value < minimum or (strict and value == minimum)):
        rel = ">" if strict else ">="
        raise ValueError(f"{name}: expected {rel} {minimum}, got {value!r}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name}: expected <= {maximum}, got {value!r}")


def validate_config(cfg: TrainConfig) -> None:
    """Check types and ranges of every field (names are checked by :func:`resolve_config`)."""
    for name in ("dataset", "head", "out"):
        if not isinstance(getattr(cfg, name), str) or not getattr(cfg, name):
            raise ValueError(f"{name}: expected a non-empty string, got {getattr(cfg, name)!r}")
    if cfg.model is not None and not isinstance(cfg.model, str):
        raise ValueError(f"model: expected a string, got {cfg.model!r}")
    if not isinstance(cfg.head_params, dict):
        raise ValueError(f"head_params: expected a mapping, got {cfg.head_params!r}")
    _check_number("epochs", cfg.epochs, integer=True, minimum=1)
    _check_number("batch_size", cfg.batch_size, integer=True, minimum=1, allow_none=True)
    _check_number("eval_batch_size", cfg.eval_batch_size, integer=True, minimum=1)
    _check_number("eval_every", cfg.eval_every, integer=True, minimum=1)
    _check_number("feat_dim", cfg.feat_dim, integer=True, minimum=1)
    _check_number("seed", cfg.seed, integer=True, minimum=0, maximum=2**63 - 1)
    _check_number("limit_train", cfg.limit_train, integer=True, minimum=1, allow_none=True)
    _check_number("limit_test", cfg.limit_test, integer=True, minimum=1, allow_none=True)
    _check_number("num_threads", cfg.num_threads, integer=True, minimum=1, allow_none=True)
    _check_number("lr", cfg.lr, minimum=0, strict=True, allow_none=True)
    _check_number("momentum", cfg.momentum, minimum=0, maximum=0.9999, allow_none=True)
    _check_number("weight_decay", cfg.weight_decay, minimum=0, allow_none=True)
    _check_number("warmup_epochs", cfg.warmup_epochs, minimum=0, allow_none=True)
    _check_number("gamma", cfg.gamma, minimum=0, strict=True, maximum=1)
    _check_number("grad_clip", cfg.grad_clip, minimum=0, strict=True, allow_none=True)
    _check_number("max_feature_norm", cfg.max_feature_norm, minimum=0, strict=True)
    _check_number("max_score", cfg.max_score, minimum=0, strict=True)
    if cfg.optimizer is not None and cfg.optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer: expected one of {list(OPTIMIZERS)}, got {cfg.optimizer!r}")
    if cfg.schedule is not None and cfg.schedule not in SCHEDULES:
        raise ValueError(f"schedule: expected one of {list(SCHEDULES)}, got {cfg.schedule!r}")
    if cfg.device not in DEVICES:
        raise ValueError(f"device: expected one of {list(DEVICES)}, got {cfg.device!r}")
    for name, choices in (("select_epoch", SELECT_EPOCHS), ("select_metric", SELECT_METRICS)):
        if getattr(cfg, name) not in choices:
            raise ValueError(f"{name}: expected one of {list(choices)}, got {getattr(cfg, name)!r}")
    for name in ("resume", "overwrite", "quiet", "bf16", "fp16", "sync_bn", "normalize_input",
                 "tensorboard"):
        if not isinstance(getattr(cfg, name), bool):
            raise ValueError(f"{name}: expected true/false, got {getattr(cfg, name)!r}")
    for name in ("nesterov", "augment"):
        if getattr(cfg, name) is not None and not isinstance(getattr(cfg, name), bool):
            raise ValueError(f"{name}: expected true/false, got {getattr(cfg, name)!r}")
    if cfg.bf16 and cfg.fp16:
        raise ValueError("bf16 and fp16 are mutually exclusive")
    if cfg.channels_last is not None and not isinstance(cfg.channels_last, bool):
        raise ValueError(f"channels_last: expected true/false, got {cfg.channels_last!r}")
    if cfg.resume and cfg.overwrite:
        raise ValueError("resume and overwrite are mutually exclusive")
    if cfg.milestones is not None:
        if (not isinstance(cfg.milestones, (list, tuple))
                or not all(isinstance(m, int) and not isinstance(m, bool) and m > 0
                           for m in cfg.milestones)):
            raise ValueError(f"milestones: expected a list of positive epoch numbers, got "
                             f"{cfg.milestones!r}")
    for f in dataclasses.fields(cfg):  # every field with declared choices, e.g. from YAML
        choices, value = f.metadata.get("choices"), getattr(cfg, f.name)
        if choices and value is not None and value not in choices:
            raise ValueError(f"{f.name}: expected one of {list(choices)}, got {value!r}")
    if cfg.unknown_classes is not None and not isinstance(cfg.unknown_classes, (list, tuple)):
        raise ValueError(f"unknown_classes: expected a list of class names or indices, got "
                         f"{cfg.unknown_classes!r}")


def _check_name(kind: str, name: str, valid) -> None:
    valid = list(valid)
    if name not in valid:
        raise ValueError(f"unknown {kind} {name!r}; valid {kind}s: {', '.join(valid)}")


def resolve_config(cfg: TrainConfig) -> TrainConfig:
    """Return a copy with the model and optimiser defaults filled in and every value checked.

    Unknown dataset / model / head names raise ValueError listing the valid names.
    """
    from unimargin.heads import recommended_settings

    cfg = dataclasses.replace(cfg, head_params=dict(cfg.head_params or {}))
    validate_config(cfg)
    from unimargin.heads import list_heads

    _check_name("head", cfg.head, list_heads())
    from unimargin.data import list_datasets

    _check_name("dataset", cfg.dataset, list_datasets())
    from unimargin.models import check_model_name, default_model

    if cfg.model is None:
        cfg.model = default_model(cfg.dataset)
    check_model_name(cfg.model)  # a built-in name or an importable package.module:factory
    rec = recommended_settings(cfg.head)
    for name in OPTIMIZER_FIELDS:
        if getattr(cfg, name) is None:
            setattr(cfg, name, rec[name])
    if cfg.schedule == "multistep" and not cfg.milestones:
        # Same shape as the [LMDL] recipe (60/120/160 of 200): 30%, 60%, 80% of the run.
        cfg.milestones = sorted({max(1, round(cfg.epochs * f)) for f in (0.3, 0.6, 0.8)})
    validate_config(cfg)
    return cfg
