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
import os
import sys
import time
from collections.abc import Iterator, Mapping, Sequence

import jax
import numpy as np
import seqio
from etils import epath

import gin
from dsbs_jax import checkpoints, cli, console, files, gin_utils, losses, partitioning, results
from dsbs_jax.checkpointing import TrainCheckpoints
from dsbs_jax.cli import PREEMPTED_EXIT, OnSigterm
from dsbs_jax.data import sources
from dsbs_jax.data.training_split import (
    TRAIN,
    all_tasks,
    check_lengths,
    count_tokens,
    describe_packing,
    host_batches,
    model_features,
    plan_packing,
    row_multiple,
)
from dsbs_jax.evaluation import VALIDATION, TaskEvaluator, Validation
from dsbs_jax.files import write_atomically
from dsbs_jax.gin_utils import ConfigError
from dsbs_jax.models import T5Config
from dsbs_jax.optimizers import Optimizer
from dsbs_jax.progress import PEAK_FLOPS, Progress, Throughput, duration
from dsbs_jax.run_tasks import Lengths, check_splits, task_lengths
from dsbs_jax.settings import Data, Evaluation, Schedule, Teacher, check_batch
from dsbs_jax.trainer import LossOptions, Trainer, TrainState
from dsbs_jax.writers import Summaries, gin_bindings, import_wandb, read_scalars

log = logging.getLogger(__name__)

EVAL_DIR = "eval"  # the final evaluation's results, laid out as dsbs-eval's
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
# The teacher's checks
# -------------------------------------------------------------------------------------------


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
# Preemption
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
    optimizer: Optimizer = gin.REQUIRED,
    data: Data = gin.REQUIRED,
    schedule: Schedule = gin.REQUIRED,
    evaluation: Evaluation | None = None,
    teacher: Teacher | None = None,
    loss_options: LossOptions | None = None,
    initial_checkpoint_path: str | None = None,
    registered_tasks: Sequence[str] = (),
    num_microbatches: int = 1,
    model_parallelism: int = 1,
    fsdp_parallelism: int = 1,
    teacher_dtype: str = "bfloat16",
    allow_truncation: bool = False,
    final_eval_splits: Sequence[str] = (VALIDATION,),
    log_period: int = 10,
    read_metrics_late: bool | None = None,
    peak_flops_per_device: float | None = None,
    resume_changes: Sequence[str] = (),
    wandb_project: str | None = None,
    wandb_entity: str | None = None,
) -> TrainResult:
    """Train until `schedule.train_steps` (or SIGTERM), evaluating and checkpointing
    periodically. `data`, `schedule`, `evaluation` and `teacher` are the run's settings
    (`dsbs_jax.settings`); the other arguments say how the step is laid on the devices and
    how the run reports.

    `registered_tasks` is there for gin: binding it to `@registry.register()` registers the
    tasks (with a data dir, vocabulary and training fraction) before they are looked up.

    The mesh is `data` x `fsdp` x `model` (`partitioning.make_mesh`): `model_parallelism`
    devices split each layer, `fsdp_parallelism` devices split every parameter and its
    optimiser state (and the online teacher's) while sharing the batch's rows with `data`;
    `num_microbatches` splits each step's batch; an online teacher runs in `teacher_dtype`.
    Those and `dsbs-fit`'s memory levers.

    `allow_truncation` trains on examples longer than the feature lengths, truncated
    (otherwise a scan of the training split stops the run before it starts). The last step
    is evaluated on `final_eval_splits` (decoding) as `dsbs-eval` would; `log_period` steps
    apart, the training scalars are written.

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
    evaluation, teacher = evaluation or Evaluation(), teacher or Teacher()
    unset = [name for name, value in locals().items() if value is gin.REQUIRED]
    if unset:
        raise ConfigError(f"no value for {unset}: bind them (the macros in gin/runs/train.gin)")
    files.check_folder(model_dir, "MODEL_DIR")
    unknown = sorted(set(resume_changes) - set(RESUME_KEYS))
    if unknown:
        raise ConfigError(f"train.resume_changes {unknown}: expected some of {RESUME_KEYS}")
    if log_period < 1:
        raise ConfigError(f"train.log_period must be at least 1: {log_period}")
    try:
        weights = losses.task_weights(data.mode, data.alpha)
        mesh = partitioning.make_mesh(model_parallelism, fsdp_parallelism)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    tasks = task_lengths(data.mode, data.label_task, data.rationale_task, data.task_feature_lengths)
    check_splits(tasks[losses.LABEL][0], final_eval_splits)
    shards = data.shards or partitioning.row_groups(mesh)[0]
    paired = all_tasks(tasks)
    check_batch(data, evaluation, mesh, num_microbatches, shards, data.pack and paired)
    scanned = check_lengths(tasks, allow_truncation)
    shapes, eval_shapes = None, None
    if data.pack:  # evaluation's losses: each task alone, its rows over the whole data axis
        eval_shapes = {
            task: plan_packing(
                {task: tasks[task]},
                scanned,
                evaluation.batch_size,
                partitioning.batch_shards(mesh),
                data.seed,
            )[task]
            for task in tasks
        }
    if data.pack and paired:
        multiple = row_multiple(mesh, num_microbatches, shards)
        shapes = plan_packing(tasks, scanned, data.batch_size // shards, multiple, data.seed)
        if jax.process_index() == 0:
            print(
                f"dsbs-train: {describe_packing(shapes, tasks, data.batch_size, shards)}",
                file=sys.stderr,
            )
    if wandb_project:
        import_wandb()  # installed? (before any work)

    teacher_config, teacher_params = None, None
    if teacher.checkpoint_path:
        teacher_config, teacher_params = load_teacher(teacher.checkpoint_path)
    distillation = teacher.distillation(teacher_config, teacher_dtype)
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
        path = teacher.checkpoint_path or teacher.topk_dir
        raise ConfigError(f"{teacher.source} {path!r}: {error}") from None
    topk = None
    if teacher.topk_dir:
        topk = topk_tasks(teacher.topk_dir, tasks, trainer.distiller.tasks, model_config.vocab_size)
    checkpoint_dir = os.path.join(model_dir, results.CHECKPOINTS_DIR)
    saved = TrainCheckpoints(
        checkpoint_dir, schedule.keep_checkpoints, schedule.keep_best, "accuracy"
    )
    latest = saved.latest_step()
    wandb = None
    if wandb_project:  # a run restarted from a checkpoint continues its W&B run
        resume = latest is not None
        config = gin_bindings(gin.operative_config_str())
        wandb = dict(project=wandb_project, entity=wandb_entity, resume=resume, config=config)
    run = results.run_info(
        model_dir,
        data.mode,
        data.label_task,
        data.rationale_task,
        **data.record(),
        train_steps=schedule.train_steps,
        model=dataclasses.asdict(model_config),
        optimizer=optimizer.settings,
        dataset_content={name: sources.dataset_fingerprint(name) for name, _ in tasks.values()},
        teacher=distillation and teacher.record(trainer.distiller.tasks, teacher_dtype),
    )
    if latest is not None:  # before Orbax is asked for a state of another shape
        _check_same_run(model_dir, run, latest, resume_changes)
    with _Preemption() as preemption, Summaries(model_dir, wandb) as summaries:
        state, position = _initial_state(trainer, saved, initial_checkpoint_path, data.seed)
        # The teacher is never in the student's checkpoints: placed again on every start.
        if teacher_params is not None:
            teacher_params = trainer.distiller.place_teacher(teacher_params)
        step = int(state.step)
        data_position = {
            "step": step,
            "batch_size": data.batch_size,
            "seed": data.seed,
            "shards": shards,
            "pack": data.pack,
        }
        consumed = [step * (data.batch_size // shards)] * shards
        if position is not None:
            consumed = position.pop(CONSUMED, consumed)
            if {**position, "step": step} != data_position:
                raise ConfigError(
                    f"the checkpoint at step {step} was trained with data {position}; this "
                    f"run has {data_position}: resume with the same BATCH_SIZE, SEED, "
                    "Data.shards and Data.pack"
                )
        if jax.process_index() == 0:
            write_atomically(os.path.join(model_dir, "config.gin"), gin.config_str())
            results.write_run(model_dir, run)

        validation = Validation(
            trainer, tasks, evaluation.batch_size, evaluation.examples, eval_shapes
        )
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
            tasks, data.batch_size, data.seed, shards, consumed, data.pack, topk, shapes, group
        )
        try:
            state, preempted = loop.run(state, batches, preemption, schedule, log_period)
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
                evaluation.examples,
            )
            for split in final_eval_splits:
                evaluator = TaskEvaluator(
                    name, split, lengths, evaluation.batch_size, evaluation.examples
                )
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
        schedule: Schedule,
        log_period: int,
    ) -> tuple[TrainState, bool]:
        """Train to `schedule.train_steps`; returns the state and whether SIGTERM stopped it
        first."""
        trainer, mesh = self.trainer, self.trainer.mesh
        train_steps = schedule.train_steps
        checkpoint_period, eval_period = schedule.checkpoint_period, schedule.eval_period
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
                mesh, {task: model_features(f) for task, f in local.items()}
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
            tokens, positions = count_tokens(local)
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
    # gin knows `dsbs_jax.programs.train.train`, not this `__main__` copy of it: run that.
    from dsbs_jax.programs.train import main as package_main

    sys.exit(package_main())
