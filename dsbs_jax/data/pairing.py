"""Training batches for one or two tasks: paired (the reference's way) or independent.

Paired: each step's label batch and rationale batch are built from the same examples in
the same order, as the reference builds both from one batch of examples. Both tasks read
the same source split with the same seeded shuffle and apply their own task's
preprocessors (one output per input, so the order is kept). A fingerprint of each
example's id travels with it (`example_hash`), and alignment is checked. Then either
`paired_batches` pads `batch_size` examples to the feature lengths (SeqIO's
`EncDecFeatureConverter`, unpacked), or `packed_paired_batches` packs the stream into each
task's fixed rows (`packing.pack_steps`: as many whole examples per step as the rows hold,
the same examples for both tasks).

Independent: each task or mixture is sampled on its own by `seqio.get_dataset`, packed or
padded; this is the mode for mixtures of datasets.

Either way the stream is deterministic for a seed, per-host (`seqio.ShardInfo`), and
restartable: a start position skips the examples already consumed, so a resumed run sees
exactly the batches an uninterrupted run sees. Pairing needs every task to keep the same
examples of the split: true of one dataset's tasks on `train`, where the source keeps only
parsed teacher outputs.
"""

from collections.abc import Iterator, Mapping

import numpy as np
import seqio
import tensorflow as tf

from dsbs_jax.data import packing, topk_store

EXAMPLE_HASH = "example_hash"
SHUFFLE_BUFFER = 10_000
Lengths = Mapping[str, int]


def example_hash(example_id: tf.Tensor) -> tf.Tensor:
    """A 62-bit fingerprint of an example id (strings cannot be padded into batches)."""
    return tf.strings.to_hash_bucket_fast(example_id, 2**62)


def _views(
    task: seqio.Task,
    split: str,
    lengths: Lengths,
    seed: int,
    shard: seqio.ShardInfo | None,
    shuffle: bool,
    num_epochs: int | None,
    skip: int,
) -> tf.data.Dataset:
    """The task's preprocessed examples over a seeded, shared order of the source, from the
    `skip`-th on: skipping raw records, before tokenization, makes a restart cheap."""
    dataset = task.source.get_dataset(split, shuffle=False, shard_info=shard)
    if shuffle:
        dataset = dataset.shuffle(SHUFFLE_BUFFER, seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.repeat(num_epochs).skip(skip)
    dataset = task.preprocess_precache(dataset, seed=seed)
    dataset = task.preprocess_postcache(dataset, sequence_length=lengths, seed=seed)
    return dataset.map(
        lambda ex: {
            "inputs": ex["inputs"],
            "targets": ex["targets"],
            EXAMPLE_HASH: example_hash(ex["id"])[None],
        },
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )


def _check_aligned(batch: dict) -> dict:
    hashes = [features[EXAMPLE_HASH] for features in batch.values()]
    with tf.control_dependencies(
        [
            tf.debugging.assert_equal(h, hashes[0], message="paired batches lost alignment")
            for h in hashes[1:]
        ]
    ):
        return {name: dict(features) for name, features in batch.items()}


def _converter(lengths: Lengths, topk: bool) -> tuple[seqio.FeatureConverter, dict]:
    """SeqIO's unpacked converter that keeps the example hash (and the top-k features),
    and the lengths to give it."""
    passthrough = {EXAMPLE_HASH: seqio.FeatureConverter.FeatureSpec(tf.int64, rank=1)}
    extra = {EXAMPLE_HASH: 1}
    if topk:
        for name, dtype in ((topk_store.IDS, tf.int32), (topk_store.LOGPROBS, tf.float32)):
            passthrough[name] = seqio.FeatureConverter.FeatureSpec(dtype, rank=2)
            extra[name] = lengths["targets"]
    converter = seqio.EncDecFeatureConverter(pack=False, passthrough_features=passthrough)
    return converter, {**lengths, **extra}


def task_examples(task_name: str, split: str, lengths: Lengths) -> tf.data.Dataset:
    """A task's examples of `split`, converted and unshuffled, once, with their hashes:
    what an offline teacher scores (`dsbs-annotate --save_topk`)."""
    task = seqio.get_mixture_or_task(task_name)
    if not isinstance(task, seqio.Task):
        raise ValueError(f"{task_name} is a mixture: score its tasks one by one")
    views = _views(task, split, lengths, 0, None, shuffle=False, num_epochs=1, skip=0)
    converter, converter_lengths = _converter(lengths, topk=False)
    return converter(views, converter_lengths)


def _paired_views(
    tasks: Mapping[str, tuple[str, Lengths]],
    split: str,
    seed: int,
    shard: seqio.ShardInfo | None,
    shuffle: bool,
    num_epochs: int | None,
    skip: int,
    topk: Mapping[str, str],
) -> dict[str, tuple[tf.data.Dataset, Lengths]]:
    """Each task's preprocessed examples (with the top-k features of the tasks in `topk`)
    and its lengths, all tasks over the same seeded order of the source."""
    by_task = {}
    for task, (task_name, lengths) in tasks.items():
        seqio_task = seqio.get_mixture_or_task(task_name)
        if not isinstance(seqio_task, seqio.Task):
            raise ValueError(f"paired batches need tasks, and {task_name} is a mixture")
        views = _views(seqio_task, split, lengths, seed, shard, shuffle, num_epochs, skip)
        if task in topk:
            store = topk_store.Store(topk[task], task_name, split)
            views = store.attach(views, EXAMPLE_HASH, lengths["targets"])
        by_task[task] = views, lengths
    return by_task


def paired_batches(
    tasks: Mapping[str, tuple[str, Lengths]],
    split: str,
    batch_size: int,
    seed: int = 0,
    shard: seqio.ShardInfo | None = None,
    shuffle: bool = True,
    num_epochs: int | None = None,
    start_step: int = 0,
    topk: Mapping[str, str] | None = None,
) -> tf.data.Dataset:
    """Per step `{task: features}` for `tasks = {task: (SeqIO task name, feature lengths)}`, all
    tasks built from the same `batch_size` examples in the same order, each padded to its
    feature lengths.

    Every task must keep the same examples of `split` (the dsbs tasks of one dataset do on
    `train`, where the source keeps only parsed teacher outputs); otherwise the alignment
    check fails. `topk` maps tasks to the root of an offline teacher's top-k stores
    (`topk_store`): those tasks' features gain `teacher_topk_ids` and
    `teacher_topk_logprobs`, `[targets length, k]` per example.
    """
    topk = topk or {}
    skip = start_step * batch_size
    views = _paired_views(tasks, split, seed, shard, shuffle, num_epochs, skip, topk)
    batches = {}
    for task, (examples, lengths) in views.items():
        converter, converter_lengths = _converter(lengths, task in topk)
        batched = converter(examples, converter_lengths).batch(batch_size, drop_remainder=True)
        batches[task] = batched
    return tf.data.Dataset.zip(batches).map(_check_aligned).prefetch(tf.data.AUTOTUNE)


def packed_paired_batches(
    tasks: Mapping[str, tuple[str, Lengths]],
    split: str,
    shapes: Mapping[str, packing.RowShape],
    seed: int = 0,
    shard: seqio.ShardInfo | None = None,
    shuffle: bool = True,
    num_epochs: int | None = None,
    start_example: int = 0,
    topk: Mapping[str, str] | None = None,
    max_examples: int | None = None,
) -> Iterator[tuple[dict[str, dict[str, np.ndarray]], int]]:
    """Per step `({task: packed features}, examples in the step)`: `paired_batches`' stream
    of examples, from the `start_example`-th on, packed into each task's `shapes` rows by
    `packing.pack_steps` (every task the same examples, in order). Each task's features
    keep the example hashes of its rows' segments out: alignment is checked per example."""
    topk = topk or {}
    views = _paired_views(tasks, split, seed, shard, shuffle, num_epochs, start_example, topk)
    examples = tf.data.Dataset.zip({task: v for task, (v, _) in views.items()})
    examples = examples.map(_check_aligned).prefetch(tf.data.AUTOTUNE)
    stream = (
        {task: {k: v for k, v in ex.items() if k != EXAMPLE_HASH} for task, ex in pair.items()}
        for pair in examples.as_numpy_iterator()
    )
    return packing.pack_steps(stream, shapes, max_examples)


def independent_batches(
    tasks: Mapping[str, tuple[str, Lengths]],
    split: str,
    batch_size: int,
    seed: int = 0,
    shard: seqio.ShardInfo | None = None,
    pack: bool = True,
    start_step: int = 0,
) -> tf.data.Dataset:
    """Per step `{task: features}`, each task's SeqIO task or mixture sampled
    independently.

    A restart at `start_step` replays the skipped batches through the pipeline (SeqIO's
    mixture sampling has no cheaper way to jump); paired batches skip raw records instead.
    """
    by_task = {}
    for index, (task, (name, lengths)) in enumerate(sorted(tasks.items())):
        dataset = seqio.get_dataset(
            name,
            task_feature_lengths=dict(lengths),
            dataset_split=split,
            shuffle=True,
            num_epochs=None,
            seed=seed + index,
            shard_info=shard,
            feature_converter=seqio.EncDecFeatureConverter(pack=pack),
        )
        by_task[task] = dataset.batch(batch_size, drop_remainder=True)
    return tf.data.Dataset.zip(by_task).skip(start_step).prefetch(tf.data.AUTOTUNE)
