"""A training run's configuration, typed: what ``python -m training.train`` trains, and where and how it ran.

``TrainingConfig`` has one field per option of ``training.train`` (the argparse destination, its type and
default; ``tests/test_config.py`` keeps the two in step). It is built from a parsed command line
(``from_args``: the recipe read, flags over it, implied defaults resolved) or from what a run recorded
(``from_record``: ``OUT/config.json``'s ``args``, a checkpoint's ``args``, a card's ``training.args``), and
written back the same way (``to_record``). Two configurations are **the same training** when they are equal
but for ``RUN_ONLY`` (where and how a run ran: output folder, device, threads, ...): ``same_training``.
A record written before an option existed lacks it and is read with the value that trained as it was
trained (``ADDED_LATER``).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, fields
from pathlib import Path

# Where and how a run ran, not what it trained: two runs that differ only in these are the same training
# (training.all_figures reuses a recorded one; tests/test_recipes compares with the card).
RUN_ONLY = ("out", "resume", "device", "threads", "no_progress", "workers", "plot_every")
# Options added after runs were recorded, with the value that trains as those runs were trained: a record
# that lacks one is read as having this value.
ADDED_LATER = {"cv_fold": None, "all_figures": False, "final_model": "ema", "threshold_from": None,
               "targets": "majority", "subtype_weight": 0.0}


@dataclass(frozen=True)
class TrainingConfig:
    """Every option of ``training.train``, in its parser's order (``--help`` says what each does); paths as
    strings, lists as tuples. Types are checked when a configuration is made."""
    config: str | None = None
    # data
    data: tuple[str, ...] = ("amibr=../shared/data/ami-br",)
    val_fraction: float = 0.25
    split_seed: int = 0
    split_file: str | None = None
    cv_fold: int | None = None
    all_figures: bool = False
    final_model: str = "ema"
    threshold_from: str | None = None
    eval_tta: str = "dihedral"
    eval_other_model: bool = False
    leave_out_domain: str | None = None
    limit: int = 0
    input_size: int = 128
    aug_strength: float = 1.0
    hed_jitter: float = 0.0
    light_aug_epochs: int = 0
    workers: int = -1
    # model
    no_mixstyle: bool = False
    mixstyle_p: float = 0.5
    mixstyle_alpha: float = 0.1
    mixstyle_start_epoch: int = 0
    dropout: float = 0.2
    pretrained: str | None = None
    # optimisation
    epochs: int = 40
    batch_size: int = 32
    lr: float = 3e-4
    weight_decay: float = 1e-2
    lr_scheduler: str = "onecycle"
    plateau_patience: int = 3
    plateau_factor: float = 0.5
    warmup_pct: float = 0.15
    clip_grad: float = 1.0
    pos_weight: float = -1.0
    early_stop: int | None = None  # implied by lr_scheduler when unset (training.train.resolve_implied_defaults)
    monitor: str = "auc"
    # what the labels say
    targets: str = "majority"
    subtype_weight: float = 0.0
    # mix, align, distil
    no_align: bool = False
    align_weight: float = 1.0
    align_standardise: bool = False
    no_kd: bool = False
    kd_weight: float = 0.5
    kd_warmup_epochs: float = 10.0
    kd_start_epoch: float = 8.0
    kd_start_auc: float | None = None
    kd_temperature: float = 2.0
    kd_teacher: str | None = None
    ema_decay: float = 0.999
    no_ema_warmup: bool = False
    # run
    out: str = "runs/default"
    resume: bool = False
    stop_after: int = 0
    seed: int = 0
    device: str = "auto"
    no_amp: bool = False
    threads: int = 0
    no_progress: bool = False
    plot_every: int = 1

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in fields(self):
            value = getattr(self, f.name)
            if not _is_instance(value, hints[f.name]):
                raise TypeError(f"training option {f.name}: {value!r} is not {hints[f.name]}")

    @classmethod
    def from_args(cls, args) -> TrainingConfig:
        """A parsed ``training.train`` command line (its implied defaults resolved)."""
        return cls.from_record(vars(args), fill_added_later=False)

    @classmethod
    def from_record(cls, record: dict, *, fill_added_later: bool = True) -> TrainingConfig:
        """What a run recorded (config.json's ``args``, a checkpoint's, a card's ``training.args``). An option it
        lacks is read as its ``ADDED_LATER`` value; one it lacks that is not there, or one this code does not
        know, is a ValueError naming it."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(record) - names)
        missing = sorted(names - set(record) - (set(ADDED_LATER) if fill_added_later else set()))
        if unknown or missing:
            raise ValueError("not training.train's options: "
                             + "; ".join(f"{what} {', '.join(keys)}" for what, keys in
                                         (("unknown", unknown), ("missing", missing)) if keys))
        values = {**{k: v for k, v in ADDED_LATER.items() if fill_added_later}, **record}
        return cls(**{k: _typed(v) for k, v in values.items()})

    def to_record(self) -> dict:
        """The form a run records (JSON: lists, paths as strings)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def training_part(self) -> dict:
        """Everything that decides what is trained: all but ``RUN_ONLY``."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in RUN_ONLY}

    def same_training(self, other: TrainingConfig) -> bool:
        """Whether the two train the same network: equal but for where and how they ran."""
        return self.training_part() == other.training_part()


def _typed(value):
    """A recorded or parsed value in the configuration's form: lists as tuples, paths as strings."""
    if isinstance(value, list):
        return tuple(value)
    if isinstance(value, Path):
        return str(value)
    return value


def _is_instance(value, hint) -> bool:
    if isinstance(hint, types.UnionType):
        return any(_is_instance(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    origin = typing.get_origin(hint)
    if origin is tuple:
        return isinstance(value, tuple) and all(_is_instance(v, typing.get_args(hint)[0]) for v in value)
    if hint is float:  # JSON and TOML write 8.0 as 8 at times; a bool is no number here
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)
