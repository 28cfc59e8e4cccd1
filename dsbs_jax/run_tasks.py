"""The tasks a run trains on or evaluates, checked before any work: which tasks a mode
reads with which feature lengths, that each is registered and its data prepared, and that
the splits asked for exist. `dsbs-train` and `dsbs-eval` both start here."""

from collections.abc import Sequence

import seqio
import tensorflow_datasets as tfds

from dsbs_jax import losses
from dsbs_jax.data.pairing import Lengths
from dsbs_jax.gin_utils import ConfigError


def task_lengths(
    mode: str, label_task: str, rationale_task: str | None, feature_lengths: Lengths
) -> dict[str, tuple[str, dict[str, int]]]:
    """`{task: (SeqIO task or mixture, {'inputs': n, 'targets': m})}` for the tasks (`label`,
    `rationale`) `mode` trains on. TASK_FEATURE_LENGTHS names `inputs` and each task's targets."""
    tasks = {losses.LABEL: label_task}
    if mode == "dsbs":
        if not rationale_task:
            raise ConfigError("MODE 'dsbs' needs RATIONALE_TASK (a rationale task or mixture)")
        tasks[losses.RATIONALE] = rationale_task
    result = {}
    for task, name in tasks.items():
        try:
            seqio.get_mixture_or_task(name)
        except ValueError as error:
            raise ConfigError(f"{task} task {name!r} is not registered ({error})") from None
        check_prepared(name)
        missing = {"inputs", task} - set(feature_lengths)
        if missing:
            raise ConfigError(
                f"TASK_FEATURE_LENGTHS {dict(feature_lengths)} lacks {sorted(missing)}: give "
                f"'inputs' and the target length of each task ({', '.join(tasks)})"
            )
        result[task] = (
            name,
            {"inputs": feature_lengths["inputs"], "targets": feature_lengths[task]},
        )
    return result


def check_prepared(task_name: str) -> None:
    """Every task of `task_name` finds its dataset: otherwise SeqIO only says, at the first
    batch, that the task "has no splits"."""
    for task in seqio.get_subtasks(seqio.get_mixture_or_task(task_name)):
        try:
            if task.source.splits:
                continue
        except tfds.core.DatasetNotFoundError:  # not prepared, and no builder class known
            pass
        source = getattr(task.source, "tfds_dataset", None)
        if source is None:
            raise ConfigError(f"task {task.name}: its data source has no splits")
        dataset = source.name.split(":")[0]
        raise ConfigError(
            f"task {task.name}: TFDS dataset {dataset} is not in DATA_DIR "
            f"{source.data_dir or '(TFDS default)'}: build it there with dsbs-prepare "
            f"--dataset {dataset.removeprefix('dsbs_')} --data_dir DATA_DIR"
        )


def check_splits(task_name: str, splits: Sequence[str]) -> None:
    """Every final evaluation split must exist for some task of `task_name` with metrics."""
    tasks = seqio.get_subtasks(seqio.get_mixture_or_task(task_name))
    for split in splits:
        if not any(task.metric_fns and split in task.splits for task in tasks):
            raise ConfigError(
                f"train.final_eval_splits has {split!r}, which no task of {task_name} with "
                "metrics has"
            )
