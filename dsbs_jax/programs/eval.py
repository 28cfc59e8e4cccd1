"""`dsbs-eval`: evaluate checkpoints on a task as one batch job, configured with gin.

    dsbs-eval --gin_file=gin/runs/eval.gin --gin.CHECKPOINT_PATH="'/runs/cqa'" \\
        --gin.TASK="'dsbs_cqa_label_llm'" --gin.SPLIT="'test'" \\
        --gin.EVAL_OUTPUT_DIR="'/runs/cqa/eval'" [--select_on=validation]

CHECKPOINT_PATH is one checkpoint (an Orbax step, a Hugging Face directory, a T5X
checkpoint), a directory of them (a training MODEL_DIR or its `checkpoints/`), or a list.
For each checkpoint and each task of TASK (a task or a mixture) and of RATIONALE_TASK (when
set: the student's own rationales, ROUGE-L against the teacher's, and how often the answer
a rationale states agrees with the predicted label), it writes `{task}_{split}_{step}.jsonl`
and `.metrics.json` into EVAL_OUTPUT_DIR (`dsbs_jax/results.py`) and TensorBoard scalars at
the checkpoint's step under `EVAL_OUTPUT_DIR/{split}`. Each result records what made it
(the checkpoint's path and a fingerprint of its content, a fingerprint of the prepared
data, the decoding settings, the lengths, the example cap): a result made the same way is
skipped, so running the command again completes an interrupted job; one made otherwise is
refused before any work (exit 2, naming the difference), or redone with
`evaluate.overwrite = True`. A checkpoint that cannot be read is named and the others still
run (exit status 1). `--select_on=validation` evaluates every checkpoint on validation and
only the best one on SPLIT.
"""

import argparse
import dataclasses
import functools
import json
import math
import re
import sys
import time
from collections.abc import Mapping, Sequence

import jax
import numpy as np
import seqio
from etils import epath

import gin
from dsbs_jax import cli, console, files, gin_utils, inference, losses, partitioning, results
from dsbs_jax.data import sources, teacher_outputs
from dsbs_jax.evaluation import TaskEvaluator
from dsbs_jax.files import write_atomically
from dsbs_jax.gin_utils import ConfigError
from dsbs_jax.run_tasks import Lengths, check_splits, task_lengths
from dsbs_jax.writers import Summaries

_T5X_STEP = re.compile(r"checkpoint_(\d+)$")


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    path: str
    step: int  # the training step; 0 where the format does not say (Hugging Face)


def _step_of(path: epath.Path) -> int:
    """An Orbax step directory is named by its step, a T5X one `checkpoint_{step}`."""
    if path.name.isdigit():
        return int(path.name)
    match = _T5X_STEP.search(path.name if path.is_dir() else path.parent.name)
    return int(match.group(1)) if match else 0


def find_checkpoints(paths: str | Sequence[str]) -> list[Checkpoint]:
    """Every checkpoint CHECKPOINT_PATH names, by step: a training MODEL_DIR or a checkpoint
    manager's directory gives all its steps, anything else is one checkpoint."""
    found = []
    for path in [paths] if isinstance(paths, str) else paths:
        directory = epath.Path(path)
        if not directory.exists():
            raise ConfigError(f"CHECKPOINT_PATH {path}: no such file or directory")
        if (directory / results.CHECKPOINTS_DIR).is_dir():
            directory = directory / results.CHECKPOINTS_DIR
        steps = [p for p in directory.iterdir() if p.name.isdigit()] if directory.is_dir() else []
        found += [Checkpoint(str(p), int(p.name)) for p in steps] or [
            Checkpoint(str(directory), _step_of(directory))
        ]
    by_step: dict[int, list[str]] = {}
    for checkpoint in found:
        by_step.setdefault(checkpoint.step, []).append(checkpoint.path)
    clashes = {step: paths for step, paths in by_step.items() if len(paths) > 1}
    if clashes:
        raise ConfigError(
            f"checkpoints at the same step would write the same results: {clashes}; evaluate "
            "them into different EVAL_OUTPUT_DIRs"
        )
    return sorted(found, key=lambda c: c.step)


def consistency(
    label_rows: Sequence[dict], rationale_rows: list[dict], dataset: str, metric_fn
) -> dict[str, float]:
    """How often the student's rationale states an answer (`states_answer`, percent of
    rationales), and how often that answer agrees with the label it predicts for the same
    input with `predict:` (`consistency`, percent of those that state one). Each rationale
    row gains `stated_answer` and `agrees_with_label`."""
    labels = {row["id"]: row["parsed_prediction"] for row in label_rows}
    stated = agreeing = 0
    for row in rationale_rows:
        answer = teacher_outputs.parse(dataset, row["prediction"])
        row["stated_answer"] = answer.label if answer.parsed else None
        row["agrees_with_label"] = None
        if answer.parsed and row["id"] in labels:
            agrees = metric_fn([answer.label], [labels[row["id"]]])["accuracy"] == 100.0
            row["agrees_with_label"] = agrees
            stated, agreeing = stated + 1, agreeing + agrees
    figures = {"states_answer": 100.0 * stated / max(len(rationale_rows), 1)}
    if stated:
        figures["consistency"] = 100.0 * agreeing / stated
    return figures


@dataclasses.dataclass
class EvalResult:
    output_dir: str
    done: dict = dataclasses.field(default_factory=dict)  # (step, split) -> {task: metrics}
    skipped: list = dataclasses.field(default_factory=list)  # (step, split) already there
    failed: dict = dataclasses.field(default_factory=dict)  # checkpoint path -> error
    selected: dict | None = None

    def summary(self) -> str:
        lines = []
        for (step, split), tasks in sorted(self.done.items()):
            for task, metrics in tasks.items():
                figures = ", ".join(f"{k} {v:.1f}" for k, v in metrics.items() if "/" not in k)
                lines.append(f"step {step} {split} {task}: {figures}")
        if self.skipped:
            lines.append(f"already evaluated (kept): {len(self.skipped)} checkpoint x split")
        if self.selected:
            lines.append(
                f"selected step {self.selected['step']} on {self.selected['split']} "
                f"({self.selected['metric']} {self.selected['value']:.1f})"
            )
        lines += [f"FAILED {path}: {error}" for path, error in self.failed.items()]
        lines.append(f"results: {self.output_dir}")
        lines.append(f"TensorBoard: tensorboard --logdir {self.output_dir}")
        return "\n".join(lines)


class StaleResult(ConfigError):
    """EVAL_OUTPUT_DIR holds a result for this checkpoint, task and split, made otherwise."""


class _Job:
    """Evaluates checkpoints one at a time, reading each only if something is left to do."""

    def __init__(
        self,
        tasks: Mapping[str, tuple[str, Lengths]],
        output_dir: str,
        mesh: jax.sharding.Mesh,
        batch_size: int,
        num_examples: int | None,
        decoding: Mapping,
        overwrite: bool = False,
    ):
        self.tasks, self.output_dir, self.mesh = tasks, output_dir, mesh
        self.batch_size, self.num_examples, self.decoding = batch_size, num_examples, decoding
        self.overwrite = overwrite
        self.evaluators: dict[tuple[str, str], TaskEvaluator] = {}
        self.checked: dict[tuple[str, str, tuple[str, ...]], dict | None] = {}
        self.summaries = Summaries(output_dir)
        self.result = EvalResult(output_dir)
        # Each is read once per job (they do not change while it runs).
        self.checkpoint_content = functools.cache(files.fingerprint)
        self.dataset_content = functools.cache(sources.dataset_fingerprint)

    def _evaluator(self, task: str, split: str) -> TaskEvaluator:
        if (task, split) not in self.evaluators:
            name, lengths = self.tasks[task]
            self.evaluators[task, split] = TaskEvaluator(
                name, split, lengths, self.batch_size, self.num_examples
            )
        return self.evaluators[task, split]

    def _metrics_path(self, task: str, split: str, step: int) -> epath.Path:
        return epath.Path(results.result_paths(self.output_dir, task, split, step)[1])

    def _made_by(self, checkpoint: Checkpoint, task: str) -> dict:
        name, lengths = self.tasks[task]
        content, dataset = self.checkpoint_content(checkpoint.path), self.dataset_content(name)
        return results.made_by(
            checkpoint.path, content, dataset, self.decoding, lengths, self.num_examples
        )

    def _finished(self, checkpoint: Checkpoint, split: str, tasks: Sequence[str]) -> dict | None:
        """The saved metrics of every task, if all are on disk and were made as this job makes
        them. Raises `StaleResult` for one made otherwise, unless `overwrite` (then None)."""
        finished, complete = {}, True
        for task in tasks:
            made_by = self._made_by(checkpoint, task)
            for task_name in self._evaluator(task, split).task_names:
                path = self._metrics_path(task_name, split, checkpoint.step)
                if not path.exists():
                    complete = False
                    continue
                saved = results.read_metrics(path)
                differences = results.differences(saved, made_by)
                if differences and not self.overwrite:
                    raise StaleResult(
                        f"{path} holds a result made otherwise "
                        f"({'; '.join(differences.values())}): "
                        "give another EVAL_OUTPUT_DIR, or bind evaluate.overwrite=True to redo it"
                    )
                complete = complete and not differences
                finished[task_name] = saved["metrics"]
        return finished if complete else None

    def check(self, checkpoints: Sequence[Checkpoint], splits: Sequence[str]) -> None:
        """Refuse before any work if a result on disk was made otherwise (what is read here
        serves `run`: each result is read once)."""
        tasks = tuple(self.tasks)
        for checkpoint in checkpoints:
            for split in splits:
                key = (checkpoint.path, split, tasks)
                self.checked[key] = self._finished(checkpoint, split, tasks)

    def run(
        self, checkpoint: Checkpoint, split: str, tasks: Sequence[str], **details
    ) -> dict | None:
        """Metrics per task of `checkpoint` on `split`; None if it cannot be read."""
        key = (checkpoint.path, split, tuple(tasks))
        if key in self.checked:
            finished = self.checked.pop(key)
        else:
            finished = self._finished(checkpoint, split, tasks)
        if finished is not None:
            self.result.skipped.append((checkpoint.step, split))
            return finished
        try:
            config, params = inference.load_params(checkpoint.path, self.mesh)
            self._check_vocabulary(config, split, tasks)
        except Exception as error:  # any unusable checkpoint: report it, go on with the rest
            self.result.failed[checkpoint.path] = f"{type(error).__name__}: {error}"
            print(f"dsbs-eval: cannot use {checkpoint.path}: {error}", file=sys.stderr)
            return None
        run = results.read_run(checkpoint.path)
        all_metrics, label_rows = {}, {}
        for task in tasks:
            start = time.monotonic()
            evaluator = self._evaluator(task, split)
            decoder = inference.BatchDecoder(
                config, params, self.mesh, self.tasks[task][1]["targets"], **self.decoding
            )
            metrics, rows = evaluator.evaluate(decoder)
            if task == losses.LABEL:
                label_rows = rows
            else:
                for task_name, task_rows in rows.items():
                    metrics[task_name].update(
                        self._consistency(task_name, task_rows, label_rows, split)
                    )
            made_by = self._made_by(checkpoint, task)
            self._write(checkpoint, split, metrics, rows, run, {**made_by, **details})
            all_metrics.update(metrics)
            examples = sum(len(r) for r in rows.values())
            seconds = time.monotonic() - start
            print(
                f"dsbs-eval: step {checkpoint.step} {split} {task}: {examples} examples in "
                f"{seconds:.1f} s ({examples / seconds:.1f}/s)",
                file=sys.stderr,
            )
        self.result.done[checkpoint.step, split] = all_metrics
        return all_metrics

    def _check_vocabulary(self, config, split: str, tasks: Sequence[str]) -> None:
        needed = max(self._evaluator(task, split).vocab_size for task in tasks)
        if config.vocab_size < needed:
            raise ValueError(
                f"the model has {config.vocab_size} token ids, fewer than the tasks' vocabulary "
                f"({needed}): a checkpoint trained with another vocabulary"
            )

    def mark_selected(self, best: Checkpoint, split: str, selected: dict) -> None:
        """Record the selection in `best`'s results (also in those kept from an earlier run)."""
        self.result.selected = selected
        if jax.process_index() != 0:
            return
        for task in self.tasks:
            for task_name in self._evaluator(task, split).task_names:
                path = self._metrics_path(task_name, split, best.step)
                saved = results.read_metrics(path)
                if saved.get("selected_on") != selected:
                    saved["selected_on"] = selected
                    write_atomically(str(path), json.dumps(saved, indent=2) + "\n")

    def _consistency(self, task: str, rows: list[dict], label_rows: dict, split: str) -> dict:
        dataset = results.dataset_name(task)
        label_tasks = self._evaluator(losses.LABEL, split).task_names
        matching = [t for t in label_tasks if results.dataset_name(t) == dataset]
        if not matching or matching[0] not in label_rows:
            return {}
        metric_fn = seqio.get_mixture_or_task(matching[0]).metric_fns[0]
        return consistency(label_rows[matching[0]], rows, dataset, metric_fn)

    def _write(self, checkpoint, split, metrics, rows, run, details) -> None:
        if jax.process_index() != 0:
            return
        results.write_results(
            self.output_dir,
            split,
            checkpoint.step,
            metrics,
            rows,
            run=run,
            **details,
        )
        scalars = {f"{task}/{k}": v for task, values in metrics.items() for k, v in values.items()}
        self.summaries.write(split, checkpoint.step, scalars)


def _score(metrics: Mapping[str, Mapping[str, float]], metric: str) -> float:
    """The mean of `metric` over the label tasks (of a mixture); -inf if none has it."""
    values = [m[metric] for m in metrics.values() if metric in m]
    return float(np.mean(values)) if values else -math.inf


def evaluate(
    checkpoint_path: str | Sequence[str] = gin.REQUIRED,
    task: str = gin.REQUIRED,
    split: str = gin.REQUIRED,
    output_dir: str = gin.REQUIRED,
    task_feature_lengths: Lengths = gin.REQUIRED,
    rationale_task: str | None = None,
    batch_size: int = 64,
    num_examples: int | None = None,
    method: str = "greedy",
    num_beams: int = 4,
    length_penalty: float = 1.0,
    select_on: str | None = None,
    select_metric: str = "accuracy",
    model_parallelism: int = 1,
    fsdp_parallelism: int = 1,
    overwrite: bool = False,
    registered_tasks: Sequence[str] = (),
) -> EvalResult:
    """Evaluate every checkpoint of `checkpoint_path` on `split` (or, with `select_on`, all on
    that split and the best by `select_metric` on `split`). With `overwrite`, results in
    `output_dir` made otherwise (another checkpoint, decoding, lengths or example cap) are
    redone instead of refused.

    `task_feature_lengths` is training's: 'inputs', and the target lengths 'label' (for
    `task`) and 'rationale' (for `rationale_task`), which bound the decoded lengths.
    """
    del registered_tasks  # bound to `@registry.register()` so the tasks exist
    unset = [name for name, value in locals().items() if value is gin.REQUIRED]
    if unset:
        raise ConfigError(f"no value for {unset}: bind them (the macros in gin/runs/eval.gin)")
    files.check_folder(output_dir, "EVAL_OUTPUT_DIR")
    mode = "dsbs" if rationale_task else "standard"
    tasks = task_lengths(mode, task, rationale_task, task_feature_lengths)
    check_splits(task, [split] + ([select_on] if select_on else []))
    try:
        mesh = partitioning.make_mesh(model_parallelism, fsdp_parallelism)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    if batch_size % partitioning.batch_shards(mesh):
        raise ConfigError(
            f"evaluate.batch_size {batch_size} must be a multiple of the data axis "
            f"({partitioning.batch_shards(mesh)} devices)"
        )
    decoding = {"method": method}
    if method == "beam":
        decoding["options"] = {"num_beams": num_beams, "length_penalty": length_penalty}
    checkpoints = find_checkpoints(checkpoint_path)
    job = _Job(tasks, output_dir, mesh, batch_size, num_examples, decoding, overwrite)
    job.check(checkpoints, [split] + ([select_on] if select_on else []))
    if not select_on:
        for checkpoint in checkpoints:
            job.run(checkpoint, split, list(tasks))
        return job.result
    scores = {}
    for checkpoint in checkpoints:
        metrics = job.run(checkpoint, select_on, [losses.LABEL])
        if metrics is not None:
            scores[checkpoint] = _score(metrics, select_metric)
    if scores:
        best = max(scores, key=lambda c: (scores[c], -c.step))  # ties: the earliest
        selected = {
            "split": select_on,
            "metric": select_metric,
            "value": scores[best],
            "step": best.step,
        }
        if job.run(best, split, list(tasks), selected_on=selected) is not None:
            job.mark_selected(best, split, selected)
    return job.result


def _select_on(args: argparse.Namespace) -> list[str]:
    return [f"evaluate.select_on = {args.select_on!r}"] if args.select_on else []


def main(argv: Sequence[str] | None = None) -> int:
    examples = ("BATCH_SIZE=16", "evaluate.num_beams=4", "EVAL_OUTPUT_DIR=\"'/tmp/eval'\"")
    parser = gin_utils.flag_parser("dsbs-eval", __doc__, "runs/eval.gin", examples)
    parser.add_argument(
        "--select_on", help="a split (validation): report SPLIT for the best checkpoint on it"
    )
    argv = sys.argv[1:] if argv is None else argv
    console.setup(parser, argv)
    try:
        result = gin_utils.run_configured(parser, evaluate, argv, _select_on)
    except cli.UsageError as error:
        print(f"dsbs-eval: configuration error: {error}", file=sys.stderr)
        return 2
    if jax.process_index() == 0:
        print(f"dsbs-eval: {result.summary()}")
    return 1 if result.failed else 0


if __name__ == "__main__":
    # gin knows `dsbs_jax.programs.eval.evaluate`, not this `__main__` copy of it: run that.
    from dsbs_jax.programs.eval import main as package_main

    sys.exit(package_main())
