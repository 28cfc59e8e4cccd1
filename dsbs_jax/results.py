"""The files that evaluations leave behind, which `dsbs-report` reads back.

A training run writes `MODEL_DIR/run.json` (what was trained: method, dataset, training
fraction, seed, ...). Every evaluation of a task on a split at a step writes, into its
output directory, `{task}_{split}_{step}.jsonl` (one row per example) and
`{task}_{split}_{step}.metrics.json`: the metrics, what made them (`made_by`: the
checkpoint and the data, each with a content fingerprint, the decoding settings), and the
run's `run.json` when the checkpoint came from a training run. The metrics file
is written last, so its presence means the evaluation is complete.
"""

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from etils import epath

from dsbs_jax.cli import UsageError
from dsbs_jax.files import absolute, write_atomically
from dsbs_jax.jsonl import json_type

RUN_FILE = "run.json"
METRICS_SUFFIX = ".metrics.json"
METRICS_KEYS = frozenset({"task", "split", "step", "metrics"})  # what a reader relies on
PREDICTIONS_SUFFIX = ".jsonl"
CHECKPOINTS_DIR = "checkpoints"


def method_name(mode: str, label_task: str) -> str:
    """The paper's method names: `standard-gt` (finetuning), `standard-llm` (standard
    distillation), `dsbs-gt`, `dsbs-llm`, `cot-gt`, `cot-llm`."""
    source = label_task.rsplit("_", 1)[-1]
    return f"{mode}-{source}" if source in ("gt", "llm") else mode


def dataset_name(task: str) -> str:
    """`dsbs_cqa_label_llm` -> `cqa`; a mixture (`dsbs_label_llm`) -> `all`."""
    parts = task.removeprefix("dsbs_").split("_")
    for kind in ("label", "rationale", "cot"):
        if kind in parts:
            return "_".join(parts[: parts.index(kind)]) or "all"
    return task


def run_info(
    model_dir: str,
    mode: str,
    label_task: str,
    rationale_task: str | None,
    **settings: Any,
) -> dict[str, Any]:
    """What `run.json` holds: the method and dataset by their report names, and settings."""
    return {
        "model_dir": os.path.abspath(model_dir),
        "method": method_name(mode, label_task),
        "dataset": dataset_name(label_task),
        "mode": mode,
        "label_task": label_task,
        "rationale_task": rationale_task,
        **settings,
    }


def write_run(model_dir: str, info: Mapping[str, Any]) -> None:
    write_atomically(os.path.join(model_dir, RUN_FILE), json.dumps(info, indent=2) + "\n")


def read_run(checkpoint_path: str) -> dict[str, Any] | None:
    """The `run.json` of the training run a checkpoint belongs to: at the path itself (a
    MODEL_DIR), or two levels up (`MODEL_DIR/checkpoints/STEP`); None for other checkpoints."""
    path = epath.Path(checkpoint_path)
    for directory in (path, path.parent, path.parent.parent):
        if (directory / RUN_FILE).exists():
            return json.loads((directory / RUN_FILE).read_text())
    return None


def differences(
    saved: Mapping[str, Any], now: Mapping[str, Any], within: str = ""
) -> dict[str, str]:
    """Each setting of `now` that `saved` records otherwise, as `KEY X there, Y now` (in a
    dict of settings, each key that differs: `optimizer.total_steps 40 there, 80 now`). One
    that `saved` lacks (a record from an older version) is no difference."""
    found = {}
    for key, value in now.items():
        if key not in saved or saved[key] == value:
            continue
        if isinstance(value, dict) and isinstance(saved[key], dict):
            if inner := differences(saved[key], value, f"{within}{key}."):
                found[key] = "; ".join(inner.values())
        else:
            found[key] = f"{within}{key} {saved[key]!r} there, {value!r} now"
    return found


def made_by(
    checkpoint: str,
    checkpoint_content: str,
    dataset: str | None,
    decoding: Mapping,
    lengths: Mapping[str, int],
    num_examples: int | None,
) -> dict[str, Any]:
    """What an evaluation's result depends on besides its task, split and step, as results
    record it: the checkpoint (its path and `files.fingerprint`), the prepared data's
    fingerprint (`sources.dataset_fingerprint`), decoding, lengths and example cap. A later
    job tells a result of its own from one made otherwise."""
    return {
        "checkpoint": absolute(checkpoint),
        "checkpoint_content": checkpoint_content,
        "dataset_content": dataset,
        "decoding": dict(decoding),
        "lengths": dict(lengths),
        "num_examples": num_examples,
    }


def result_paths(directory: str, task: str, split: str, step: int) -> tuple[str, str]:
    """(predictions JSONL, metrics JSON) of one task on one split at one step."""
    stem = os.path.join(directory, f"{task}_{split}_{step}")
    return stem + PREDICTIONS_SUFFIX, stem + METRICS_SUFFIX


def write_result(
    directory: str,
    task: str,
    split: str,
    step: int,
    metrics: Mapping[str, float],
    rows: Sequence[Mapping[str, Any]],
    **details: Any,
) -> tuple[str, str]:
    """Write the predictions, then the metrics (the mark of a finished evaluation)."""
    predictions_path, metrics_path = result_paths(directory, task, split, step)
    write_atomically(predictions_path, "".join(json.dumps(row) + "\n" for row in rows))
    result = {
        "task": task,
        "split": split,
        "step": step,
        "examples": len(rows),
        "metrics": dict(metrics),
        "predictions": os.path.abspath(predictions_path),
        **details,
    }
    write_atomically(metrics_path, json.dumps(result, indent=2) + "\n")
    return predictions_path, metrics_path


def write_results(
    directory: str,
    split: str,
    step: int,
    metrics: Mapping[str, Mapping[str, float]],
    rows: Mapping[str, Sequence[Mapping[str, Any]]],
    **details: Any,
) -> list[str]:
    """`write_result` for each task of an evaluation; returns the predictions paths."""
    return [
        write_result(directory, task, split, step, metrics[task], rows[task], **details)[0]
        for task in rows
    ]


def find_results(directory: str) -> Iterator[dict[str, Any]]:
    """Every metrics JSON under `directory` (recursively), with its own path as `path`."""
    paths = (  # Not `rglob`: epath refuses `**` patterns (costly on GCS).
        root / name
        for root, _, names in epath.Path(directory).walk()
        for name in names
        if name.endswith(METRICS_SUFFIX)
    )
    for path in sorted(paths):
        yield {**read_metrics(path), "path": str(path)}


def read_metrics(path: epath.Path) -> dict[str, Any]:
    """A metrics file's record; one that is not (a hand-edited or truncated file) is named."""
    try:
        result = json.loads(path.read_bytes())
    except ValueError as error:  # not JSON, or not UTF-8
        raise UsageError(f"{path}: not a metrics file ({error})") from None
    if not isinstance(result, dict):
        raise UsageError(f"{path}: holds {json_type(result)} (expected a JSON object)")
    if missing := sorted(METRICS_KEYS - set(result)):
        raise UsageError(f"{path}: not a metrics file (no {', '.join(missing)})")
    return result
