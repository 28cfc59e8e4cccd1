"""A training run's settings, as gin binds them: what a step trains on (`Data`), how long and
how often it saves and evaluates (`Schedule`), how it evaluates (`Evaluation`), and its
teacher (`Teacher`). `gin/runs/train.gin` binds their fields to the macros users set
(`Data.batch_size = %BATCH_SIZE`, ...) and hands them to `dsbs-train`'s `train()`, as T5X's
gin hands its trainer a `DatasetConfig`; `dsbs-fit` builds the same ones to compile the
same step. Each checks itself when built, naming the macro or binding to change.

`run.json` records them (flat, as `dsbs-report` reads it): `Data` and `Schedule`'s fields,
and the teacher's as `Teacher.record`.
"""

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import jax

import gin
from dsbs_jax import files, partitioning
from dsbs_jax.distill import Distillation
from dsbs_jax.gin_utils import ConfigError
from dsbs_jax.models import T5Config


def _required(settings: Any, macros: Mapping[str, str]) -> None:
    """A field gin left REQUIRED: name the macro (or binding) that sets it."""
    unset = [
        macros.get(field.name, f"{type(settings).__name__}.{field.name}")
        for field in dataclasses.fields(settings)
        if getattr(settings, field.name) is gin.REQUIRED
    ]
    if unset:
        raise ConfigError(f"no value for {unset}: bind them (the macros in gin/runs/train.gin)")


@dataclasses.dataclass(frozen=True)
class Data:
    """What a step trains on: the tasks of `mode` (`label_task`, and `rationale_task` in
    dsbs mode) blended by `alpha`, at `task_feature_lengths`, `batch_size` examples per
    step. `train_fraction` and `seed` are those `tasks.register` drew the training
    subsample with (recorded for `dsbs-report`); `seed` also shuffles, packs and
    initialises. `pack` packs each step's examples into rows (padding each to the lengths
    otherwise); the split is read as `shards` shards (None: one per group of hosts that
    read their own rows)."""

    mode: str = gin.REQUIRED
    label_task: str = gin.REQUIRED
    rationale_task: str | None = None
    task_feature_lengths: Mapping[str, int] = gin.REQUIRED  # not pairing.Lengths: no TF
    batch_size: int = gin.REQUIRED
    alpha: float = 0.5
    train_fraction: float = 1.0
    seed: int = 0
    pack: bool = True
    shards: int | None = None

    def __post_init__(self):
        _required(
            self,
            {
                "mode": "MODE",
                "label_task": "LABEL_TASK",
                "task_feature_lengths": "TASK_FEATURE_LENGTHS",
                "batch_size": "BATCH_SIZE",
            },
        )
        if self.batch_size < 1:
            raise ConfigError(f"BATCH_SIZE must be at least 1: {self.batch_size}")

    def record(self) -> dict[str, Any]:
        """What `run.json` keeps of it: what was trained (not how it was read)."""
        kept = ("train_fraction", "seed", "alpha", "batch_size")
        return {name: getattr(self, name) for name in kept} | {
            "task_feature_lengths": dict(self.task_feature_lengths)
        }


@dataclasses.dataclass(frozen=True)
class Schedule:
    """`train_steps` steps; a checkpoint every `checkpoint_period` and a validation every
    `eval_period` steps (and at the last), keeping the newest `keep_checkpoints` and the
    best `keep_best` by validation accuracy."""

    train_steps: int = gin.REQUIRED
    checkpoint_period: int = 1000
    eval_period: int = 1000
    keep_checkpoints: int = 3
    keep_best: int = 1

    def __post_init__(self):
        _required(self, {"train_steps": "TRAIN_STEPS"})
        periods = {"CHECKPOINT_PERIOD": self.checkpoint_period, "EVAL_PERIOD": self.eval_period}
        if any(value < 1 for value in periods.values()):
            raise ConfigError(f"these must be at least 1: {periods}")


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """Validation (every `eval_period` steps) and the final evaluation: batches of
    `batch_size` examples, the first `examples` of each split (None: all)."""

    batch_size: int = 64
    examples: int | None = None


@dataclasses.dataclass(frozen=True)
class Teacher:
    """Distillation from a teacher: online (`checkpoint_path`, a Hugging Face, T5X or Orbax
    checkpoint of the student's vocabulary, run frozen inside each step) or offline
    (`topk_dir`, `dsbs-annotate --save_topk`'s stores), never both; `kd_weight` (beta) times
    the token KL at `kd_temperature` in `kd_direction` over `kd_tasks` (None: all the mode
    trains on), and `hidden_weight` (gamma) times the `hidden_kind` distance between
    `hidden_layers` (student, teacher) pairs (`distill.Distillation` says each). No
    teacher and both weights 0: no distillation."""

    checkpoint_path: str | None = None
    topk_dir: str | None = None
    kd_weight: float = 0.0
    kd_temperature: float = 1.0
    kd_direction: str = "forward"
    kd_tasks: Sequence[str] | None = None
    hidden_weight: float = 0.0
    hidden_layers: Sequence[Sequence[str]] = (("decoder:-1", "decoder:-1"),)
    hidden_kind: str = "mse"

    def __post_init__(self):
        """A teacher and a weight for it come together: either alone is a forgotten
        binding. One teacher: online or offline, never both."""
        weights = f"KD_WEIGHT is {self.kd_weight} and HIDDEN_WEIGHT {self.hidden_weight}"
        teacher = self.checkpoint_path or self.topk_dir
        if self.checkpoint_path and self.topk_dir:
            raise ConfigError(
                "TEACHER_CHECKPOINT_PATH (an online teacher) and TEACHER_TOPK_DIR (an offline "
                "one) are both set: keep one"
            )
        if teacher and self.kd_weight == 0 and self.hidden_weight == 0:
            raise ConfigError(
                f"the teacher is {teacher!r} but {weights}, so the teacher would not count: "
                "set KD_WEIGHT (beta) or HIDDEN_WEIGHT (gamma) > 0, or no teacher"
            )
        if not teacher and (self.kd_weight != 0 or self.hidden_weight != 0):
            raise ConfigError(
                f"{weights} but there is no teacher: set TEACHER_CHECKPOINT_PATH (a Hugging "
                "Face, T5X or Orbax checkpoint) or TEACHER_TOPK_DIR (dsbs-annotate "
                "--save_topk), or both weights to 0"
            )
        if self.topk_dir and self.hidden_weight != 0:
            raise ConfigError(
                f"HIDDEN_WEIGHT is {self.hidden_weight} but TEACHER_TOPK_DIR is an offline "
                "teacher, which has no hidden states: use TEACHER_CHECKPOINT_PATH, or "
                "HIDDEN_WEIGHT = 0"
            )

    @property
    def source(self) -> str:
        """The macro that names the teacher ("" for none)."""
        if self.checkpoint_path:
            return "TEACHER_CHECKPOINT_PATH"
        return "TEACHER_TOPK_DIR" if self.topk_dir else ""

    def distillation(self, teacher_config: T5Config | None, dtype: str) -> Distillation | None:
        """The step's `Distillation` (None without a teacher): `teacher_config` is the
        online teacher's (None offline), run in `dtype` (`train.teacher_dtype`)."""
        if not self.source:
            return None
        try:
            return Distillation(
                teacher_config,
                self.kd_weight,
                self.kd_temperature,
                self.kd_direction,
                None if self.kd_tasks is None else tuple(self.kd_tasks),
                dtype,
                self.hidden_weight,
                tuple(tuple(pair) for pair in self.hidden_layers),
                self.hidden_kind,
            )
        except ValueError as error:
            raise ConfigError(str(error)) from None

    def record(self, distilled: Sequence[str], dtype: str) -> dict[str, Any] | None:
        """What `run.json` keeps of the teacher: its fields, the checkpoint's content, the
        tasks it covers (`distilled`, resolved) and its dtype; None without one."""
        if not self.source:
            return None
        path = self.checkpoint_path
        return dataclasses.asdict(self) | {
            "checkpoint_path": path and files.absolute(path),
            "checkpoint_content": path and files.fingerprint(path),
            "topk_dir": self.topk_dir and files.absolute(self.topk_dir),
            "kd_tasks": list(distilled),
            "dtype": dtype,
            "hidden_layers": [list(pair) for pair in self.hidden_layers],
        }


def check_batch(
    data: Data,
    evaluation: Evaluation,
    mesh: jax.sharding.Mesh,
    num_microbatches: int,
    shards: int,
    packed: bool,
) -> None:
    """Padded batches split their examples over the data axis and microbatches; packed
    ones split their rows, whose number `row_multiple` makes fit."""
    data_devices = partitioning.batch_shards(mesh)
    groups, _ = partitioning.row_groups(mesh)
    batch_size = data.batch_size
    if num_microbatches < 1:
        raise ConfigError(f"train.num_microbatches must be at least 1: {num_microbatches}")
    if evaluation.batch_size % data_devices:
        raise ConfigError(
            f"Evaluation.batch_size {evaluation.batch_size} must be a multiple of the data "
            f"axis ({data_devices} devices)"
        )
    if not packed and batch_size % (data_devices * num_microbatches):
        raise ConfigError(
            f"BATCH_SIZE {batch_size} must be a multiple of the data axis ({data_devices} "
            f"devices) times num_microbatches ({num_microbatches})"
        )
    if shards % groups or batch_size % shards:
        raise ConfigError(
            f"Data.shards ({shards}) must be a multiple of the {groups} groups of hosts "
            f"that read their own rows (hosts, or hosts sharing a model axis) and divide "
            f"BATCH_SIZE {batch_size}"
        )
