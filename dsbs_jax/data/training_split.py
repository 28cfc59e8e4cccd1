"""The training split as a run reads it: the scan of its examples' lengths (which guards
the feature lengths and sizes packed rows), the plan of a step's packed rows, and each
host's share of every step's batch (`host_batches`, over `pairing`'s streams).

A step's batch is the same whatever the number of hosts, and restartable: the split is
read as a fixed number of shards, each from the count of examples it has put in steps.
"""

import logging
import math
from collections.abc import Iterator, Mapping, Sequence

import jax
import numpy as np
import seqio
import tensorflow as tf

from dsbs_jax import partitioning
from dsbs_jax.data import packing
from dsbs_jax.data.pairing import (
    EXAMPLE_HASH,
    Lengths,
    independent_batches,
    packed_paired_batches,
    paired_batches,
)
from dsbs_jax.gin_utils import ConfigError

log = logging.getLogger(__name__)

TRAIN = "train"
LENGTH_SCAN_EXAMPLES = 2000
# A task of a run: its SeqIO name and its feature lengths ('inputs', 'targets').
Tasks = Mapping[str, tuple[str, Lengths]]


def _token_counts(dataset: tf.data.Dataset, features: Sequence[str]) -> dict | None:
    """Each feature's length in every example (None for no example): counted by TensorFlow
    and read as one batch, not example by example in Python."""

    @tf.autograph.experimental.do_not_convert
    def count(example: dict) -> dict:
        return {feature: tf.size(example[feature]) for feature in features}

    counted = dataset.map(count, num_parallel_calls=tf.data.AUTOTUNE)
    batch = next(counted.batch(LENGTH_SCAN_EXAMPLES).as_numpy_iterator(), None)
    return None if batch is None else {feature: batch[feature].tolist() for feature in features}


def check_lengths(tasks: Tasks, allow_truncation: bool) -> dict[str, np.ndarray]:
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
    tasks: Tasks,
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
    tasks: Tasks,
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


def model_features(features: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A batch's features that the model takes (not the ids' hashes that check pairing)."""
    return {k: v for k, v in features.items() if k != EXAMPLE_HASH}


def all_tasks(tasks: Tasks) -> bool:
    """Whether every task is a SeqIO task (trained paired), not a mixture (sampled apart)."""
    return all(isinstance(seqio.get_mixture_or_task(n), seqio.Task) for n, _ in tasks.values())


def host_batches(
    tasks: Tasks,
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


def count_tokens(batch: Mapping[str, Mapping[str, np.ndarray]]) -> tuple[int, int]:
    """The batch's real tokens, and the token positions a step computes (padding too)."""
    names = ("encoder_input_tokens", "decoder_target_tokens")
    features = [f[name] for f in batch.values() for name in names]
    return sum(int(np.count_nonzero(f)) for f in features), sum(f.size for f in features)
