"""`dsbs-train`: train a T5 student by distilling step-by-step, configured with gin.

    dsbs-train --gin_file=gin/runs/quickstart.gin [--gin.NAME=VALUE ...]
        [--coordinator_address=HOST:PORT --num_processes=N --process_id=I]

`train()` is the run, every argument bound in gin (`gin/runs/train.gin` names the macros:
MODEL_DIR, MODE, LABEL_TASK, RATIONALE_TASK, TASK_FEATURE_LENGTHS, TRAIN_STEPS,
BATCH_SIZE, ALPHA, CHECKPOINT_PERIOD, EVAL_PERIOD, INITIAL_CHECKPOINT_PATH, and for
distillation from a teacher TEACHER_CHECKPOINT_PATH (online) or TEACHER_TOPK_DIR
(offline), KD_WEIGHT, KD_TEMPERATURE, HIDDEN_WEIGHT).
Running the same command again resumes from the newest checkpoint in MODEL_DIR (the
teacher, never part of it, is loaded again); SIGTERM saves one and exits 75
(`PREEMPTED_EXIT`: not finished, run the same command again). Outputs in
MODEL_DIR: `config.gin`, `checkpoints/`, TensorBoard events under `train/` and
`validation/`, `run.json` (what was trained, for `dsbs-report`), and the final evaluation's
`eval/{task}_{split}_{step}.jsonl` and `.metrics.json` (as `dsbs-eval` writes). With
`train.wandb_project`, the scalars go to a Weights & Biases run too (`wandb/`,
`wandb_run_id`).
"""

import dataclasses
import json
import logging
import math
import os
import sys
import time
from collections.abc import Iterator, Mapping, Sequence

import jax
import numpy as np
import seqio
import tensorflow as tf
from etils import epath

import gin
from dsbs_jax import checkpoints, cli, console, files, gin_utils, losses, partitioning, results
from dsbs_jax.checkpointing import TrainCheckpoints
from dsbs_jax.cli import PREEMPTED_EXIT, OnSigterm
from dsbs_jax.data import packing, sources
from dsbs_jax.data.pairing import (
    EXAMPLE_HASH,
    independent_batches,
    packed_paired_batches,
    paired_batches,
)
from dsbs_jax.distill import Distillation
from dsbs_jax.evaluation import TaskEvaluator, padded_batches
from dsbs_jax.files import write_atomically
from dsbs_jax.gin_utils import ConfigError
from dsbs_jax.inference import BatchDecoder
from dsbs_jax.models import T5Config
from dsbs_jax.optimizers import Optimizer
from dsbs_jax.progress import PEAK_FLOPS, Progress, Throughput, duration
from dsbs_jax.run_tasks import Lengths, check_splits, task_lengths
from dsbs_jax.trainer import LossOptions, Trainer, TrainState
from dsbs_jax.writers import Summaries, gin_bindings, import_wandb, read_scalars

log = logging.getLogger(__name__)

TRAIN, VALIDATION = "train", "validation"
EVAL_DIR = "eval"  # the final evaluation's results, laid out as dsbs-eval's
LENGTH_SCAN_EXAMPLES = 2000
CONSUMED = "examples"  # the data position's per-shard count of examples trained on


class NonFiniteLoss(RuntimeError):
    """A step's loss was NaN or infinite; the checkpoints on disk predate it."""


@dataclasses.dataclass(frozen=True)
class TrainResult:
    model_dir: str
    step: int
    preempted: bool
    validation: dict  # the last evaluation's figures
    final: dict  # per split of `final_eval_splits`, per label task, its metrics
    predictions: list[str]  # the final evaluation's predictions files
    run: dict  # run.json: method, dataset, tasks, fraction, steps
    seconds: float  # this process's wall time
    examples_per_second: float | None  # over its training steps, compilation excluded
    best: tuple[str, float, int] | None  # (metric, value, step) of all validations on disk

    def summary(self) -> str:
        """What a person copies into a lab notebook: what was trained, how fast, how well,
        and where everything is."""
        run = self.run
        tasks = ", ".join(filter(None, [run["label_task"], run["rationale_task"]]))
        lines = [
            f"stopped at step {self.step} of {run['train_steps']}"
            + (" (SIGTERM)" if self.preempted else ""),
            f"trained {run['method']} on {run['dataset']} ({tasks}), "
            f"{run['train_fraction']:.0%} of the training set",
        ]
        speed = "" if self.examples_per_second is None else f", {self.examples_per_second:.1f} "
        speed += "examples/s while training" if speed else ""
        lines.append(f"wall time {duration(self.seconds)}{speed}")
        if self.best:
            metric, value, step = self.best
            lines.append(f"best validation {metric} {value:.4g} at step {step}")
        for split, tasks_metrics in self.final.items():
            for task, metrics in tasks_metrics.items():
                figures = ", ".join(f"{k} {v:.1f}" for k, v in metrics.items() if "/" not in k)
                lines.append(f"{split} {task}: {figures}")
        lines.append(f"checkpoints: {os.path.join(self.model_dir, results.CHECKPOINTS_DIR)}")
        lines.append(f"TensorBoard: tensorboard --logdir {self.model_dir}")
        lines += [f"predictions: {path}" for path in self.predictions]
        return "\n".join(lines)


def best_validation(model_dir: str) -> tuple[str, float, int] | None:
    """The best validation figure the run has logged, on the metric checkpoints are ranked
    by: accuracy, or the label loss where the task has none."""
    directory = os.path.join(model_dir, VALIDATION)
    for metric, sign in (("accuracy", -1), ("loss/label", 1)):
        values = read_scalars(directory, metric)
        if values:  # the best value, and of equal ones the first step
            step = min(values, key=lambda s: (sign * values[s], s))
            return metric, values[step], step
    return None


# -------------------------------------------------------------------------------------------
# Configuration checks
# -------------------------------------------------------------------------------------------


def check_batch(
    batch_size: int,
    eval_batch_size: int,
    mesh: jax.sharding.Mesh,
    num_microbatches: int,
    shards: int,
    packed: bool,
) -> None:
    """Padded batches split their examples over the data axis and microbatches; packed
    ones split their rows, whose number `row_multiple` makes fit."""
    data_devices = partitioning.batch_shards(mesh)
    groups, _ = partitioning.row_groups(mesh)
    if eval_batch_size % data_devices:
        raise ConfigError(
            f"train.eval_batch_size {eval_batch_size} must be a multiple of the data axis "
            f"({data_devices} devices)"
        )
    if not packed and batch_size % (data_devices * num_microbatches):
        raise ConfigError(
            f"BATCH_SIZE {batch_size} must be a multiple of the data axis ({data_devices} "
            f"devices) times num_microbatches ({num_microbatches})"
        )
    if shards % groups or batch_size % shards:
        raise ConfigError(
            f"data_shards ({shards}) must be a multiple of the {groups} groups of hosts "
            f"that read their own rows (hosts, or hosts sharing a model axis) and divide "
            f"BATCH_SIZE {batch_size}"
        )


def _token_counts(dataset: tf.data.Dataset, features: Sequence[str]) -> dict | None:
    """Each feature's length in every example (None for no example): counted by TensorFlow
    and read as one batch, not example by example in Python."""

    @tf.autograph.experimental.do_not_convert
    def count(example: dict) -> dict:
        return {feature: tf.size(example[feature]) for feature in features}

    counted = dataset.map(count, num_parallel_calls=tf.data.AUTOTUNE)
    batch = next(counted.batch(LENGTH_SCAN_EXAMPLES).as_numpy_iterator(), None)
    return None if batch is None else {feature: batch[feature].tolist() for feature in features}


def check_lengths(
    tasks: Mapping[str, tuple[str, Lengths]], allow_truncation: bool
) -> dict[str, np.ndarray]:
    """Stop before training if the feature lengths truncate examples of the training split
    (scanning up to `LENGTH_SCAN_EXAMPLES` of each task), unless truncation is allowed.
    Returns each task's `[n, 2]` (inputs, targets) token lengths of the scanned examples
    (the same examples for every task of a paired run): what packed rows are sized by."""
    problems, scanned = [], {}
    for task, (name, lengths) in tasks.items():
        dataset = seqio.get_mixture_or_task(name).get_dataset(
            None, split=TRAIN, shuffle=False, num_epochs=1
        )
        sizes = _token_counts(dataset.take(LENGTH_SCAN_EXAMPLES), tuple(lengths))
        if sizes is None:
            raise ConfigError(f"task {name!r} has no training examples")
        for feature, limit in lengths.items():
            over = sum(size > limit for size in sizes[feature])
            if over:
                key = "inputs" if feature == "inputs" else task
                problems.append(
                    f"{name}: {over} of {len(sizes[feature])} examples have {feature} longer "
                    f"than {limit} tokens (longest {max(sizes[feature])}); raise "
                    f"TASK_FEATURE_LENGTHS['{key}']"
                )
        scanned[task] = np.stack([sizes["inputs"], sizes["targets"]], axis=1)
    if problems and not allow_truncation:
        raise ConfigError(
            "feature lengths would truncate examples:\n  "
            + "\n  ".join(problems)
            + "\n(or bind train.allow_truncation = True to truncate them)"
        )
    for problem in problems:
        log.warning("truncating: %s", problem)
    return scanned


def plan_packing(
    tasks: Mapping[str, tuple[str, Lengths]],
    scanned: Mapping[str, np.ndarray],
    examples: int,
    row_multiple: int,
    seed: int,
) -> dict[str, packing.RowShape]:
    """Each task's packed rows for steps of `examples` examples on average (one shard's
    share of a step), sized from the scanned training lengths."""
    caps = {task: (lengths["inputs"], lengths["targets"]) for task, (_, lengths) in tasks.items()}
    return packing.plan_rows(
        {task: scanned[task] for task in tasks}, caps, examples, row_multiple, seed
    )


def row_multiple(mesh: jax.sharding.Mesh, num_microbatches: int, shards: int) -> int:
    """What one shard's packed rows per step must be a multiple of, so that a step's rows
    (all shards') split evenly over the data axis and the microbatches."""
    needed = partitioning.batch_shards(mesh) * num_microbatches
    return needed // math.gcd(needed, shards)


def describe_packing(
    shapes: Mapping[str, packing.RowShape],
    tasks: Mapping[str, tuple[str, Lengths]],
    batch_size: int,
    shards: int,
) -> str:
    """The packed rows a step trains on, against what padding every example costs."""
    rows = ", ".join(
        f"{task} {shape.rows * shards} x (inputs {shape.inputs}, targets {shape.targets})"
        for task, shape in shapes.items()
    )
    packed = sum(shape.positions() for shape in shapes.values()) * shards / batch_size
    padded = sum(lengths["inputs"] + lengths["targets"] for _, lengths in tasks.values())
    return (
        f"packing {batch_size} examples per step on average into rows of {rows}: "
        f"{packed:.0f} token positions per example (padded to the feature lengths: {padded})"
    )


def check_distillation(
    teacher_checkpoint_path: str | None,
    teacher_topk_dir: str | None,
    kd_weight: float,
    hidden_weight: float,
) -> None:
    """A teacher and a weight for it come together: either alone is a forgotten binding.
    One teacher: online (a checkpoint) or offline (top-k stores), never both."""
    weights = f"KD_WEIGHT is {kd_weight} and HIDDEN_WEIGHT {hidden_weight}"
    teacher = teacher_checkpoint_path or teacher_topk_dir
    if teacher_checkpoint_path and teacher_topk_dir:
        raise ConfigError(
            "TEACHER_CHECKPOINT_PATH (an online teacher) and TEACHER_TOPK_DIR (an offline "
            "one) are both set: keep one"
        )
    if teacher and kd_weight == 0 and hidden_weight == 0:
        raise ConfigError(
            f"the teacher is {teacher!r} but {weights}, so the teacher would not count: set "
            "KD_WEIGHT (beta) or HIDDEN_WEIGHT (gamma) > 0, or no teacher"
        )
    if not teacher and (kd_weight != 0 or hidden_weight != 0):
        raise ConfigError(
            f"{weights} but there is no teacher: set TEACHER_CHECKPOINT_PATH (a Hugging Face, "
            "T5X or Orbax checkpoint) or TEACHER_TOPK_DIR (dsbs-annotate --save_topk), or both "
            "weights to 0"
        )
    if teacher_topk_dir and hidden_weight != 0:
        raise ConfigError(
            f"HIDDEN_WEIGHT is {hidden_weight} but TEACHER_TOPK_DIR is an offline teacher, "
            "which has no hidden states: use TEACHER_CHECKPOINT_PATH, or HIDDEN_WEIGHT = 0"
        )


def load_teacher(path: str) -> tuple[T5Config, dict]:
    """The teacher's config and host parameters, read by `checkpoints.load` (any format)."""
    try:
        return checkpoints.load(path)
    except (ValueError, FileNotFoundError) as error:  # CheckpointError is a ValueError
        raise ConfigError(f"TEACHER_CHECKPOINT_PATH {path!r} cannot be read: {error}") from None


def topk_tasks(
    teacher_topk_dir: str,
    tasks: Mapping[str, tuple[str, Lengths]],
    distilled: Sequence[str],
    vocab_size: int,
) -> dict[str, str]:
    """`{task: TEACHER_TOPK_DIR}` for the distilled tasks, each store checked against the
    run's task, lengths, vocabulary and training subsample before training starts. Stores
    are read into paired batches, so each must be a SeqIO task, not a mixture."""
    from dsbs_jax.data import topk_store

    for task_name, _ in tasks.values():
        if not isinstance(seqio.get_mixture_or_task(task_name), seqio.Task):
            raise ConfigError(
                f"TEACHER_TOPK_DIR needs tasks, and {task_name} is a mixture (stores are per task)"
            )
    for task in distilled:
        task_name, lengths = tasks[task]
        try:
            store = topk_store.Store(teacher_topk_dir, task_name, TRAIN)
            store.check_fits(lengths, vocab_size, *sources.subsample(task_name))
        except topk_store.StoreError as error:
            raise ConfigError(f"TEACHER_TOPK_DIR: {error}") from None
    return {task: teacher_topk_dir for task in distilled}


# -------------------------------------------------------------------------------------------
# Data
# -------------------------------------------------------------------------------------------


def _model_features(features: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: v for k, v in features.items() if k != EXAMPLE_HASH}


def all_tasks(tasks: Mapping[str, tuple[str, Lengths]]) -> bool:
    """Whether every task is a SeqIO task (trained paired), not a mixture (sampled apart)."""
    return all(isinstance(seqio.get_mixture_or_task(n), seqio.Task) for n, _ in tasks.values())


def host_batches(
    tasks: Mapping[str, tuple[str, Lengths]],
    batch_size: int,
    seed: int,
    data_shards: int,
    consumed: Sequence[int],
    pack: bool,
    topk: Mapping[str, str] | None = None,
    shapes: Mapping[str, packing.RowShape] | None = None,
    group: tuple[int, int] = (1, 0),
) -> Iterator[tuple[dict, list[int]]]:
    """This host's rows of each global batch, and the examples each of its shards put in
    the step. The training split is read as `data_shards` shards, each contributing
    `batch_size / data_shards` examples per step, padded, or with `pack` packed into
    `shapes` rows (that many on average); a host reads its `group`'s contiguous run of
    shards (`(groups, index)`: `partitioning.row_groups`), shard `i` from its
    `consumed[i]`-th example on. For a given `data_shards`, the global batch is therefore
    the same whatever the number of hosts, and a restart continues the same stream.

    Tasks that are mixtures are sampled independently (`independent_batches`: with `pack`,
    SeqIO's packing into `batch_size` rows) and restart by replaying `consumed[i] / rows` steps."""
    paired = all_tasks(tasks)
    groups, index = group
    per_group = data_shards // groups
    rows = batch_size // data_shards
    streams = []
    for shard in range(index * per_group, (index + 1) * per_group):
        info = seqio.ShardInfo(index=shard, num_shards=data_shards)
        start = consumed[shard]
        if paired and pack:
            streams.append(
                packed_paired_batches(
                    tasks, TRAIN, shapes, seed, info, start_example=start, topk=topk
                )
            )
            continue
        if paired:
            dataset = paired_batches(
                tasks, TRAIN, rows, seed, info, start_step=start // rows, topk=topk
            )
        else:
            dataset = independent_batches(tasks, TRAIN, rows, seed, info, pack, start // rows)
        streams.append((batch, rows) for batch in dataset.as_numpy_iterator())
    while True:
        parts, counts = zip(*(next(stream) for stream in streams), strict=True)
        yield (
            {
                task: {k: np.concatenate([p[task][k] for p in parts]) for k in parts[0][task]}
                for task in parts[0]
            },
            list(counts),
        )


def _count_tokens(batch: Mapping[str, Mapping[str, np.ndarray]]) -> tuple[int, int]:
    """The batch's real tokens, and the token positions a step computes (padding too)."""
    names = ("encoder_input_tokens", "decoder_target_tokens")
    features = [f[name] for f in batch.values() for name in names]
    return sum(int(np.count_nonzero(f)) for f in features), sum(f.size for f in features)


# -------------------------------------------------------------------------------------------
# Evaluation
# -------------------------------------------------------------------------------------------


class Validation:
    """Teacher-forced loss per task, and the label task's metrics from greedy decoding, on
    the validation split (never test: runs are selected on validation)."""

    def __init__(
        self,
        trainer: Trainer,
        tasks: Mapping[str, tuple[str, Lengths]],
        batch_size: int,
        num_examples: int | None,
        shapes: Mapping[str, packing.RowShape] | None = None,
    ):
        self.trainer, self.batch_size, self.tasks = trainer, batch_size, tasks
        self.loss_batches = {
            task: list(self._loss_dataset(name, lengths, num_examples, shapes and shapes.get(task)))
            for task, (name, lengths) in tasks.items()
        }
        name, lengths = tasks[losses.LABEL]
        self.label = TaskEvaluator(name, VALIDATION, lengths, batch_size, num_examples)

    def _loss_dataset(
        self,
        name: str,
        lengths: Lengths,
        num_examples: int | None,
        shape: packing.RowShape | None,
    ) -> Iterator[dict[str, np.ndarray]]:
        """Batches of each task of `name` (a mixture's tasks one after another, in full:
        sampling a mixture would stop at its first exhausted task), packed into `shape`'s
        rows, or padded batches of `batch_size` examples without a shape."""
        for task in seqio.get_subtasks(seqio.get_mixture_or_task(name)):
            if VALIDATION not in task.splits:
                continue
            if shape is not None:
                examples = task.get_dataset(
                    dict(lengths), split=VALIDATION, shuffle=False, num_epochs=1
                )
                if num_examples:
                    examples = examples.take(num_examples)
                stream = (
                    {"task": {k: ex[k] for k in ("inputs", "targets")}}
                    for ex in examples.as_numpy_iterator()
                )
                for batch, _ in packing.pack_steps(stream, {"task": shape}):
                    yield batch["task"]
                continue
            dataset = seqio.get_dataset(
                task.name,
                task_feature_lengths=dict(lengths),
                dataset_split=VALIDATION,
                shuffle=False,
                num_epochs=1,
                feature_converter=seqio.EncDecFeatureConverter(pack=False),
            )
            if num_examples:
                dataset = dataset.take(num_examples)
            for batch in padded_batches(dataset, self.batch_size):
                batch.pop("rows")
                yield batch

    def task_losses(self, params) -> dict[str, float]:
        figures = {}
        for task, batches in self.loss_batches.items():
            total, tokens = 0.0, 0.0
            for batch in batches:
                global_batch = partitioning.whole_batch(self.trainer.mesh, batch)
                sums = self.trainer.run_eval_step(params, {task: global_batch})[task]
                total, tokens = total + float(sums[0]), tokens + float(sums[1])
            figures[f"loss/{task}"] = total / max(tokens, 1.0)
        return figures

    def evaluate(self, params) -> tuple[dict[str, float], dict[str, list[dict]]]:
        """Validation losses and the label task's metrics (per task of a mixture, and their
        mean as `accuracy` when they have one), plus per-example rows."""
        figures = self.task_losses(params)
        metrics, rows = self.label.evaluate(self.decoder(params))
        for task, values in metrics.items():
            figures.update({f"{task}/{k}": v for k, v in values.items()})
        accuracies = [v["accuracy"] for v in metrics.values() if "accuracy" in v]
        if accuracies:
            figures["accuracy"] = float(np.mean(accuracies))
        return figures, rows

    def decoder(self, params) -> BatchDecoder:
        max_length = self.tasks[losses.LABEL][1]["targets"]
        return BatchDecoder(self.trainer.config, params, self.trainer.mesh, max_length)


# -------------------------------------------------------------------------------------------
# Outputs
# -------------------------------------------------------------------------------------------


class _Preemption(OnSigterm):
    """While active, a SIGTERM only sets a flag: the loop saves and stops at the end of the
    step; after the loop, the final evaluation is skipped (the run is preempted all the same);
    a run stopped before its loop exits as it would have."""

    def __init__(self):
        self.requested = False

    def on_sigterm(self) -> None:
        self.requested = True

    def reached(self, step: int, period: int) -> bool:
        """True on every host once any host was asked to stop. Several hosts agree on it
        every `period` steps only: asking is a collective, which would wait for the step."""
        if jax.process_count() == 1:
            return self.requested
        if step % period:
            return False
        flags = partitioning.gather(np.array([self.requested]))
        return bool(np.any(flags))


# -------------------------------------------------------------------------------------------
# The run
# -------------------------------------------------------------------------------------------


# What a resumed run must share with the run that saved its checkpoints (`run.json`'s keys):
# resuming with another of these would give a run that neither setting describes.
RESUME_KEYS = (
    "mode",
    "label_task",
    "rationale_task",
    "train_fraction",
    "seed",
    "alpha",
    "train_steps",
    "batch_size",
    "task_feature_lengths",
    "model",
    "optimizer",
    "dataset_content",
    "teacher",
)


def _check_same_run(model_dir: str, run: dict, step: int, changes: Sequence[str]) -> None:
    """Refuse to resume checkpoints that a run with other settings saved, but for the
    settings named in `changes`."""
    path = epath.Path(model_dir) / results.RUN_FILE
    if not path.exists():
        return
    saved = json.loads(path.read_text())
    differences = results.differences(saved, {key: run[key] for key in RESUME_KEYS})
    changed = list(differences)
    if set(changed) - set(changes):
        raise ConfigError(
            f"{model_dir} holds a run at step {step} with other settings "
            f"({'; '.join(differences.values())}): resume it with its own, bind "
            f"train.resume_changes={changed} to go on with these, or give a new MODEL_DIR "
            "(INITIAL_CHECKPOINT_PATH can start it from that run's weights)"
        )


def _initial_state(
    trainer: Trainer, saved: TrainCheckpoints, initial_checkpoint_path: str | None, seed: int
) -> tuple[TrainState, dict | None]:
    step = saved.latest_step()
    if step is not None:
        if jax.process_index() == 0:
            print(f"dsbs-train: resuming from the checkpoint at step {step}", file=sys.stderr)
        return saved.restore(step, trainer.abstract_state, trainer.state_sharding)
    if not initial_checkpoint_path:
        return trainer.create_state(seed), None
    try:
        _, params = checkpoints.load(initial_checkpoint_path)
    except (checkpoints.CheckpointError, FileNotFoundError) as error:
        raise ConfigError(f"INITIAL_CHECKPOINT_PATH cannot be read: {error}") from None
    try:
        checkpoints.check_params(trainer.config, params, initial_checkpoint_path)
    except checkpoints.CheckpointError as error:
        raise ConfigError(
            f"INITIAL_CHECKPOINT_PATH does not fit MODEL_CONFIG: {error} (include the matching "
            "gin/models/ file)"
        ) from None
    return trainer.create_state(seed, params), None


def _finite(metrics: Mapping[str, float], step: int) -> None:
    """Stop on a NaN or Inf loss, gradient or parameter norm, before this step is saved."""
    bad = {k: v for k, v in metrics.items() if not np.isfinite(v)}
    if bad:
        raise NonFiniteLoss(
            f"step {step}: non-finite {bad}; the newest checkpoint on disk predates this step "
            "(lower the learning rate, or check the data)"
        )


def train(
    model_dir: str = gin.REQUIRED,
    model_config: T5Config = gin.REQUIRED,
    mode: str = gin.REQUIRED,
    label_task: str = gin.REQUIRED,
    rationale_task: str | None = None,
    task_feature_lengths: Lengths = gin.REQUIRED,
    train_steps: int = gin.REQUIRED,
    batch_size: int = gin.REQUIRED,
    optimizer: Optimizer = gin.REQUIRED,
    alpha: float = 0.5,
    checkpoint_period: int = 1000,
    eval_period: int = 1000,
    initial_checkpoint_path: str | None = None,
    registered_tasks: Sequence[str] = (),
    seed: int = 0,
    train_fraction: float = 1.0,
    num_microbatches: int = 1,
    model_parallelism: int = 1,
    fsdp_parallelism: int = 1,
    loss_options: LossOptions | None = None,
    keep_checkpoints: int = 3,
    keep_best: int = 1,
    eval_batch_size: int = 64,
    eval_examples: int | None = None,
    final_eval_splits: Sequence[str] = (VALIDATION,),
    log_period: int = 10,
    data_shards: int | None = None,
    pack: bool = True,
    allow_truncation: bool = False,
    peak_flops_per_device: float | None = None,
    teacher_checkpoint_path: str | None = None,
    kd_weight: float = 0.0,
    kd_temperature: float = 1.0,
    kd_direction: str = "forward",
    kd_tasks: Sequence[str] | None = None,
    teacher_dtype: str = "bfloat16",
    teacher_topk_dir: str | None = None,
    hidden_weight: float = 0.0,
    hidden_layers: Sequence[Sequence[str]] = (("decoder:-1", "decoder:-1"),),
    hidden_kind: str = "mse",
    read_metrics_late: bool | None = None,
    resume_changes: Sequence[str] = (),
    wandb_project: str | None = None,
    wandb_entity: str | None = None,
) -> TrainResult:
    """Train until `train_steps` (or SIGTERM), evaluating and checkpointing periodically.

    `registered_tasks` is there for gin: binding it to `@registry.register()` registers the
    tasks (with a data dir, vocabulary and training fraction) before they are looked up.
    `train_fraction` is that fraction, recorded in `run.json` for `dsbs-report`.

    With `teacher_checkpoint_path`, a frozen teacher of the student's vocabulary runs in
    every step: `kd_weight` (beta) times its token KL and `hidden_weight` (gamma) times the
    distance between `hidden_layers` (student, teacher) pairs join the loss
    (`Distillation`: `kd_temperature`, `kd_direction`, `kd_tasks`, `teacher_dtype`,
    `hidden_kind`).

    The mesh is `data` x `fsdp` x `model` (`partitioning.make_mesh`): `model_parallelism`
    devices split each layer, `fsdp_parallelism` devices split every parameter and its
    optimiser state (and the online teacher's) while sharing the batch's rows with `data`.

    `read_metrics_late` reads each step's metrics after the next step is dispatched (None:
    on accelerators, where the host's work is then free; not on CPUs, where the host and
    XLA compete for the same cores: 9% slower there, `bench/dispatch.py`).

    A run resumed from MODEL_DIR must have the settings of the run that saved it
    (`RESUME_KEYS` of its `run.json`); `resume_changes` names those changed on purpose (to
    train on past the first `train_steps`: `['train_steps']`).

    `wandb_project` (and `wandb_entity`) log the scalars to a Weights & Biases run too, its
    config the operative gin bindings; a run resumed from MODEL_DIR continues the same W&B
    run (`dsbs_jax/writers.py`). The API key comes from the environment only.
    """
    del registered_tasks
    started = time.monotonic()
    unset = [name for name, value in locals().items() if value is gin.REQUIRED]
    if unset:
        raise ConfigError(f"no value for {unset}: bind them (the macros in gin/runs/train.gin)")
    files.check_folder(model_dir, "MODEL_DIR")
    unknown = sorted(set(resume_changes) - set(RESUME_KEYS))
    if unknown:
        raise ConfigError(f"train.resume_changes {unknown}: expected some of {RESUME_KEYS}")
    periods = {"CHECKPOINT_PERIOD": checkpoint_period, "EVAL_PERIOD": eval_period}
    periods |= {"train.log_period": log_period, "train.num_microbatches": num_microbatches}
    if any(value < 1 for value in periods.values()):
        raise ConfigError(f"these must be at least 1: {periods}")
    try:
        weights = losses.task_weights(mode, alpha)
        mesh = partitioning.make_mesh(model_parallelism, fsdp_parallelism)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    tasks = task_lengths(mode, label_task, rationale_task, task_feature_lengths)
    check_splits(tasks[losses.LABEL][0], final_eval_splits)
    data_shards = data_shards or partitioning.row_groups(mesh)[0]
    paired = all_tasks(tasks)
    check_batch(batch_size, eval_batch_size, mesh, num_microbatches, data_shards, pack and paired)
    scanned = check_lengths(tasks, allow_truncation)
    shapes, eval_shapes = None, None
    if pack:  # evaluation's losses: each task alone, its rows over the whole data axis
        eval_shapes = {
            task: plan_packing(
                {task: tasks[task]}, scanned, eval_batch_size, partitioning.batch_shards(mesh), seed
            )[task]
            for task in tasks
        }
    if pack and paired:
        multiple = row_multiple(mesh, num_microbatches, data_shards)
        shapes = plan_packing(tasks, scanned, batch_size // data_shards, multiple, seed)
        if jax.process_index() == 0:
            print(
                f"dsbs-train: {describe_packing(shapes, tasks, batch_size, data_shards)}",
                file=sys.stderr,
            )
    check_distillation(teacher_checkpoint_path, teacher_topk_dir, kd_weight, hidden_weight)
    if wandb_project:
        import_wandb()  # installed? (before any work)

    distillation, teacher = None, None
    if teacher_checkpoint_path or teacher_topk_dir:
        teacher_config = None
        if teacher_checkpoint_path:
            teacher_config, teacher = load_teacher(teacher_checkpoint_path)
        try:
            distillation = Distillation(
                teacher_config,
                kd_weight,
                kd_temperature,
                kd_direction,
                None if kd_tasks is None else tuple(kd_tasks),
                teacher_dtype,
                hidden_weight,
                tuple(tuple(pair) for pair in hidden_layers),
                hidden_kind,
            )
        except ValueError as error:
            raise ConfigError(str(error)) from None
    try:
        trainer = Trainer(
            model_config,
            optimizer,
            mesh,
            weights,
            loss_options or LossOptions(),
            num_microbatches,
            distillation,
        )
    except ValueError as error:
        if distillation is None:
            raise
        source = "TEACHER_CHECKPOINT_PATH" if teacher_checkpoint_path else "TEACHER_TOPK_DIR"
        path = teacher_checkpoint_path or teacher_topk_dir
        raise ConfigError(f"{source} {path!r}: {error}") from None
    topk = None
    if teacher_topk_dir:
        topk = topk_tasks(teacher_topk_dir, tasks, trainer.distiller.tasks, model_config.vocab_size)
    checkpoint_dir = os.path.join(model_dir, results.CHECKPOINTS_DIR)
    saved = TrainCheckpoints(checkpoint_dir, keep_checkpoints, keep_best, "accuracy")
    latest = saved.latest_step()
    wandb = None
    if wandb_project:  # a run restarted from a checkpoint continues its W&B run
        resume = latest is not None
        config = gin_bindings(gin.operative_config_str())
        wandb = dict(project=wandb_project, entity=wandb_entity, resume=resume, config=config)
    run = results.run_info(
        model_dir,
        mode,
        label_task,
        rationale_task,
        train_fraction=train_fraction,
        seed=seed,
        alpha=alpha,
        train_steps=train_steps,
        batch_size=batch_size,
        task_feature_lengths=dict(task_feature_lengths),
        model=dataclasses.asdict(model_config),
        optimizer=optimizer.settings,
        dataset_content={name: sources.dataset_fingerprint(name) for name, _ in tasks.values()},
        teacher=None
        if distillation is None
        else {
            "checkpoint_path": teacher_checkpoint_path and files.absolute(teacher_checkpoint_path),
            "checkpoint_content": teacher_checkpoint_path
            and files.fingerprint(teacher_checkpoint_path),
            "topk_dir": teacher_topk_dir and files.absolute(teacher_topk_dir),
            "kd_weight": kd_weight,
            "kd_temperature": kd_temperature,
            "kd_direction": kd_direction,
            "kd_tasks": list(trainer.distiller.tasks),
            "dtype": teacher_dtype,
            "hidden_weight": hidden_weight,
            "hidden_layers": [list(pair) for pair in hidden_layers],
            "hidden_kind": hidden_kind,
        },
    )
    if latest is not None:  # before Orbax is asked for a state of another shape
        _check_same_run(model_dir, run, latest, resume_changes)
    with _Preemption() as preemption, Summaries(model_dir, wandb) as summaries:
        state, position = _initial_state(trainer, saved, initial_checkpoint_path, seed)
        # The teacher is never in the student's checkpoints: placed again on every start.
        teacher_params = None if teacher is None else trainer.distiller.place_teacher(teacher)
        del teacher
        step = int(state.step)
        data_position = {
            "step": step,
            "batch_size": batch_size,
            "seed": seed,
            "shards": data_shards,
            "pack": pack,
        }
        consumed = [step * (batch_size // data_shards)] * data_shards
        if position is not None:
            consumed = position.pop(CONSUMED, consumed)
            if {**position, "step": step} != data_position:
                raise ConfigError(
                    f"the checkpoint at step {step} was trained with data {position}; this "
                    f"run has {data_position}: resume with the same BATCH_SIZE, seed, "
                    "data_shards and pack"
                )
        if jax.process_index() == 0:
            write_atomically(os.path.join(model_dir, "config.gin"), gin.config_str())
            results.write_run(model_dir, run)

        validation = Validation(trainer, tasks, eval_batch_size, eval_examples, eval_shapes)
        if read_metrics_late is None:  # on CPUs the host and XLA share the cores
            read_metrics_late = jax.devices()[0].platform != "cpu"
        loop = _Loop(
            trainer,
            saved,
            validation,
            summaries,
            data_position,
            consumed,
            read_metrics_late,
        )
        loop.teacher_params = teacher_params
        loop.peak_flops = peak_flops_per_device or PEAK_FLOPS.get(jax.devices()[0].device_kind)
        group = partitioning.row_groups(mesh)
        batches = host_batches(
            tasks, batch_size, seed, data_shards, consumed, pack, topk, shapes, group
        )
        try:
            state, preempted = loop.run(
                state, batches, preemption, train_steps, log_period, checkpoint_period, eval_period
            )
        finally:
            try:
                saved.wait()  # saves already started are of good steps: let them land
            finally:
                saved.close()
        final, predictions = {}, []
        # A SIGTERM after the last step: the final evaluation waits too, on every host.
        preempted = preempted or preemption.reached(int(state.step), 1)
        if not preempted:
            decode = validation.decoder(state.params)
            name, lengths = tasks[losses.LABEL]
            step_dir = os.path.join(checkpoint_dir, str(int(state.step)))
            made_by = results.made_by(
                step_dir,
                files.fingerprint(step_dir),
                run["dataset_content"][name],
                {"method": "greedy"},
                lengths,
                eval_examples,
            )
            for split in final_eval_splits:
                evaluator = TaskEvaluator(name, split, lengths, eval_batch_size, eval_examples)
                final[split], rows = evaluator.evaluate(decode)
                if jax.process_index() == 0:
                    predictions += results.write_results(
                        os.path.join(model_dir, EVAL_DIR),
                        split,
                        int(state.step),
                        final[split],
                        rows,
                        run=run,
                        **made_by,
                    )
    step = int(state.step)
    rate = loop.progress.steps_per_second() if loop.progress else None
    examples_per_second = rate and rate * loop.throughput.mean_examples
    best = best_validation(model_dir) if jax.process_index() == 0 else None
    seconds = time.monotonic() - started
    return TrainResult(
        model_dir,
        step,
        preempted,
        loop.last_eval,
        final,
        predictions,
        run,
        seconds,
        examples_per_second,
        best,
    )


class _Loop:
    """The training loop: steps, logs, periodic evaluation and checkpoints, preemption.

    With `read_late`, a step's metrics are read one step late, after the next step is
    dispatched, so the host prepares the next batch while the devices compute (reading
    them at once waits for the step to finish). Before anything is saved or evaluated the
    step's own metrics are read and checked: no non-finite step is ever saved."""

    def __init__(self, trainer, saved, validation, summaries, data_position, consumed, read_late):
        self.trainer, self.saved, self.validation = trainer, saved, validation
        self.summaries, self.data_position = summaries, data_position
        self.read_late = read_late
        self.consumed = list(consumed)  # examples trained on, per shard of all hosts
        # The groups of hosts that read their own rows (`partitioning.row_groups`), and
        # the shards this host's group reads.
        self.groups, group = partitioning.row_groups(trainer.mesh)
        per_group = len(self.consumed) // self.groups
        self.shards = slice(group * per_group, (group + 1) * per_group)
        self.peak_flops: float | None = None
        self.teacher_params = None  # placed by `Distiller.place_teacher`, when it distils
        self.last_eval: dict = {}
        self.progress: Progress | None = None  # this process's, once it has run
        self.throughput: Throughput | None = None

    def _evaluate(self, state: TrainState, progress: Progress) -> dict:
        step = int(state.step)
        with progress.evaluating():
            self.last_eval, _ = self.validation.evaluate(state.params)
        self.summaries.write(VALIDATION, step, self.last_eval)
        progress.note(step, VALIDATION, self.last_eval)
        # Checkpoints are ranked by accuracy; a label task without one by its loss.
        return {"accuracy": self.last_eval.get("accuracy", -self.last_eval["loss/label"])}

    def _position(self, step: int) -> dict:
        """The data position at `step`: every group's shards' counts (a collective; each
        host knows only its own group's)."""
        known = np.full(len(self.consumed), -1)
        known[self.shards] = self.consumed[self.shards]
        counts = partitioning.gather(known).reshape(-1, len(self.consumed)).max(axis=0)
        return {**self.data_position, "step": step, CONSUMED: counts.tolist()}

    def run(
        self,
        state: TrainState,
        batches: Iterator[tuple[dict, list[int]]],
        preemption: _Preemption,
        train_steps: int,
        log_period: int,
        checkpoint_period: int,
        eval_period: int,
    ) -> tuple[TrainState, bool]:
        """Train to `train_steps`; returns the state and whether SIGTERM stopped it first."""
        trainer, mesh = self.trainer, self.trainer.mesh
        step = int(state.step)
        self.progress = progress = Progress(train_steps, eval_period)
        pending, shards = None, self.shards

        def record(step, metrics, examples, tokens, positions):
            metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
            _finite(metrics, step)
            self.throughput.add(examples, tokens, positions)
            last = step == train_steps
            if step % log_period == 0 or last:
                self.summaries.write(TRAIN, step, {**metrics, **self.throughput.read()})
            progress.update(step, metrics["loss"], self.throughput.mean_examples, force=last)

        while step < train_steps:
            local, counts = next(batches)
            batch = partitioning.global_batch(
                mesh, {task: _model_features(f) for task, f in local.items()}
            )
            if self.throughput is None:
                progress.compiling()
                # Both per device: XLA counts the FLOPs of one device's share of the step.
                flops = trainer.flops_per_step(state, batch, self.teacher_params)
                self.throughput = Throughput(flops, self.peak_flops)
            state, metrics = trainer.run_train_step(state, batch, self.teacher_params)
            step += 1
            if pending is not None:
                record(*pending)
            self.consumed[shards] = [
                c + n for c, n in zip(self.consumed[shards], counts, strict=True)
            ]
            groups = self.groups
            tokens, positions = _count_tokens(local)
            pending = (step, metrics, sum(counts) * groups, tokens * groups, positions * groups)
            last = step == train_steps
            preempted = preemption.reached(step, log_period)  # then save, without evaluating
            due = step % eval_period == 0 or last
            if not self.read_late or due or preempted or step % checkpoint_period == 0:
                record(*pending)  # a step's metrics are checked before it is saved
                pending = None
            evaluated = self._evaluate(state, progress) if due and not preempted else None
            if step % checkpoint_period == 0 or last or preempted or evaluated:
                self.saved.save(state, trainer.config, self._position(step), evaluated)
            if preempted:
                log.warning("SIGTERM: saved step %d and stopping", step)
                return state, True
        return state, False


# -------------------------------------------------------------------------------------------
# Command line
# -------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    examples = ("TRAIN_STEPS=1000", "train.log_period=10", "MODEL_DIR=\"'/tmp/run'\"")
    parser = gin_utils.flag_parser("dsbs-train", __doc__, "runs/train.gin", examples)
    console.setup(parser, argv)
    try:
        result = gin_utils.run_configured(parser, train, argv)
    except cli.UsageError as error:
        print(f"dsbs-train: configuration error: {error}", file=sys.stderr)
        return 2
    except NonFiniteLoss as error:
        print(f"dsbs-train: {error}", file=sys.stderr)
        return 1
    if jax.process_index() == 0:
        print(f"dsbs-train: {result.summary()}")
    return PREEMPTED_EXIT if result.preempted else 0


if __name__ == "__main__":
    # gin knows `dsbs_jax.train.train`, not this `__main__` copy of it: run the package's.
    from dsbs_jax.train import main as package_main

    sys.exit(package_main())
