"""An offline teacher's top-k log-probabilities per example, on disk, joined to training
examples by id, so the teacher never occupies training memory.

`dsbs-annotate --save_topk K` writes one store per task and split, `DIR/{task}/{split}/`:

    topk.json                          what was scored: teacher, k, lengths, vocabulary, count
    hashes.npy                         record i's `example_hash` (int64 [N], the only part
                                       a reader holds in memory)
    topk.array_record-00000-of-0000S   the records, `RECORDS_PER_SHARD` per file: each a
                                       `tf.train.Example` of `targets` (int32, the tokens
                                       scored), `ids` (int32) and `logprobs` (float32),
                                       both `[target tokens, k]` flattened

A reader looks each example up by its hash and reads its record (ArrayRecord: random
access), in any order, shard or subsample of the split. Positions line up with the targets
of any run whose input length equals the store's and whose target length is at most the
store's: the decoder is causal, so a target cut shorter changes no earlier position. An
example whose targets are not the ones scored (a dataset rebuilt since) stops the run: an
id alone would join it to stale log-probabilities.
"""

import dataclasses
import json
import os
import shutil
from collections.abc import Mapping

import numpy as np
import tensorflow as tf
from array_record.python import array_record_data_source, array_record_module

from dsbs_jax.distill import TOPK_IDS, TOPK_LOGPROBS
from dsbs_jax.files import is_remote, swap_in, write_atomically

METADATA, HASHES, RECORDS = "topk.json", "hashes.npy", "topk.array_record"
RECORDS_PER_SHARD = 10_000
# 2: records keep the target tokens they scored (stores of format 1 are refused).
FORMAT = 2
# The features a store adds to a task's examples, `[targets length, k]` after padding.
IDS, LOGPROBS = TOPK_IDS, TOPK_LOGPROBS


class StoreError(ValueError):
    """A store that is missing, or does not fit the run that reads it."""


def store_dir(root: str, task: str, split: str) -> str:
    """Where a task's store is: on local disk only (ArrayRecord and numpy read local files)."""
    if is_remote(root):
        raise StoreError(
            f"{root}: top-k stores are read and written on local disk only; copy the store "
            "to the machine that uses it"
        )
    return os.path.join(root, task, split)


@dataclasses.dataclass(frozen=True)
class Metadata:
    """What a store holds and how it was made."""

    task: str
    split: str
    k: int
    lengths: Mapping[str, int]  # the inputs and targets lengths the teacher was run with
    vocab_size: int
    examples: int
    shards: int
    teacher: Mapping
    format: int = 1
    # The training subsample scored (`--train_fraction`, TRAIN_FRACTION and SEED): the
    # subsets are nested, so a store covers the runs of this seed with at most its fraction.
    train_fraction: float = 1.0
    subsample_seed: int = 0


class StoreWriter:
    """Append examples' top-k arrays; `close` writes the index and metadata and moves the
    finished store into place (a store is whole or absent, never half-written)."""

    def __init__(
        self, root: str, task: str, split: str, records_per_shard: int = RECORDS_PER_SHARD
    ):
        self.final = store_dir(root, task, split)
        self.partial = self.final + ".partial"
        shutil.rmtree(self.partial, ignore_errors=True)
        os.makedirs(self.partial)
        self.task, self.split, self.records_per_shard = task, split, records_per_shard
        self.hashes: list[int] = []
        self._seen: set[int] = set()
        self.shard_paths: list[str] = []
        self._writer = None

    def add(
        self, example_hash: int, targets: np.ndarray, ids: np.ndarray, logprobs: np.ndarray
    ) -> None:
        """One example's record: the `[n]` target tokens scored, and their top-k."""
        if not len(targets) == len(ids) == len(logprobs):
            raise StoreError(
                f"{self.task} {self.split}: example hash {example_hash} has {len(targets)} "
                f"targets but {len(ids)} top-k ids and {len(logprobs)} log-probabilities"
            )
        if example_hash in self._seen:
            raise StoreError(f"{self.task} {self.split}: example hash {example_hash} appears twice")
        if len(self.hashes) % self.records_per_shard == 0:
            self._next_shard()
        features = {
            "targets": _bytes(np.asarray(targets, np.int32)),
            "ids": _bytes(np.asarray(ids, np.int32)),
            "logprobs": _bytes(np.asarray(logprobs, np.float32)),
        }
        record = tf.train.Example(features=tf.train.Features(feature=features))
        self._writer.write(record.SerializeToString())
        self.hashes.append(int(example_hash))
        self._seen.add(int(example_hash))

    def _next_shard(self) -> None:
        if self._writer is not None:
            self._writer.close()
        path = os.path.join(self.partial, f"{RECORDS}-{len(self.shard_paths):05d}")
        self._writer = array_record_module.ArrayRecordWriter(path, "group_size:1")
        self.shard_paths.append(path)

    def close(
        self,
        k: int,
        lengths: Mapping[str, int],
        vocab_size: int,
        teacher: Mapping,
        train_fraction: float = 1.0,
        subsample_seed: int = 0,
    ) -> str:
        if self._writer is not None:
            self._writer.close()
        count = len(self.shard_paths)
        for index, path in enumerate(self.shard_paths):
            os.rename(path, os.path.join(self.partial, f"{RECORDS}-{index:05d}-of-{count:05d}"))
        np.save(os.path.join(self.partial, HASHES), np.asarray(self.hashes, np.int64))
        metadata = Metadata(
            self.task, self.split, k, dict(lengths), vocab_size, len(self.hashes), count, teacher,
            format=FORMAT, train_fraction=train_fraction, subsample_seed=subsample_seed,
        )  # fmt: skip
        write_atomically(
            os.path.join(self.partial, METADATA), json.dumps(dataclasses.asdict(metadata), indent=2)
        )
        swap_in(self.partial, self.final)
        return self.final


def _bytes(array: np.ndarray) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[array.tobytes()]))


class Store:
    """A finished store, read by example hash (`attach`)."""

    def __init__(self, root: str, task: str, split: str):
        self.path = store_dir(root, task, split)
        metadata_path = os.path.join(self.path, METADATA)
        if not os.path.exists(metadata_path):
            raise StoreError(
                f"no top-k store for task {task!r}, split {split!r} at {self.path} (expected "
                f"{METADATA}; write it with dsbs-annotate --save_topk K --tasks {task})"
            )
        with open(metadata_path) as stream:
            self.metadata = Metadata(**json.load(stream))
        if self.metadata.format < FORMAT:
            raise StoreError(
                f"top-k store {self.path} was written before stores kept the targets they "
                f"scored (format {self.metadata.format}, expected {FORMAT}): score the task "
                f"again with dsbs-annotate --save_topk {self.metadata.k} --tasks {task}"
            )
        self.hashes = np.load(os.path.join(self.path, HASHES), allow_pickle=False)
        count = self.metadata.shards
        paths = [os.path.join(self.path, f"{RECORDS}-{i:05d}-of-{count:05d}") for i in range(count)]
        self.records = array_record_data_source.ArrayRecordDataSource(paths)

    def check_fits(
        self,
        lengths: Mapping[str, int],
        vocab_size: int,
        train_fraction: float = 1.0,
        subsample_seed: int = 0,
    ) -> None:
        """Refuse a run whose targets this store cannot cover, another vocabulary, or a
        training subsample it did not score (a larger fraction, or another seed's)."""
        stored, metadata = self.metadata.lengths, self.metadata
        problems = []
        if metadata.train_fraction < 1 and (
            train_fraction > metadata.train_fraction or subsample_seed != metadata.subsample_seed
        ):
            problems.append(
                f"TRAIN_FRACTION {train_fraction} and SEED {subsample_seed} (the store scored "
                f"the subsample of fraction {metadata.train_fraction}, seed "
                f"{metadata.subsample_seed}: at most that fraction of that seed)"
            )
        if lengths["inputs"] != stored["inputs"]:
            problems.append(f"inputs length {lengths['inputs']} (the store's: {stored['inputs']})")
        if lengths["targets"] > stored["targets"]:
            problems.append(
                f"targets length {lengths['targets']} (at most the store's {stored['targets']})"
            )
        if vocab_size != self.metadata.vocab_size:
            problems.append(
                f"a vocabulary of {vocab_size} tokens (the teacher's: {self.metadata.vocab_size})"
            )
        if problems:
            raise StoreError(
                f"top-k store {self.path} does not fit a run with {'; '.join(problems)}"
            )

    def attach(
        self, examples: tf.data.Dataset, hash_key: str, targets_length: int
    ) -> tf.data.Dataset:
        """Add `IDS` and `LOGPROBS`, `[targets_length, k]` (0 past the targets), to each
        example, found by its `hash_key` feature (`[1]` int64); an example the store lacks
        stops the pipeline with an error that names it."""
        table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant(self.hashes, tf.int64), tf.range(len(self.hashes), dtype=tf.int64)
            ),
            default_value=-1,
        )
        k, path = self.metadata.k, self.path
        spec = {
            name: tf.io.FixedLenFeature([], tf.string) for name in ("targets", "ids", "logprobs")
        }

        def read(index: tf.Tensor) -> tf.Tensor:
            return self.records[int(index)]

        def add(example):
            example_hash = example[hash_key][0]
            index = table.lookup(example_hash)
            found = tf.debugging.Assert(
                index >= 0,
                [f"no record in top-k store {path} for the example of hash", example_hash],
            )
            with tf.control_dependencies([found]):
                record = tf.py_function(read, [index], tf.string)
            parsed = tf.io.parse_single_example(record, spec)
            length = tf.shape(example["targets"])[0]
            scored = tf.io.decode_raw(parsed["targets"], tf.int32)
            n = tf.minimum(tf.shape(scored)[0], length)  # a shorter record: `covers` says so
            targets = tf.cast(example["targets"], tf.int32)
            same = tf.debugging.Assert(
                tf.reduce_all(tf.equal(scored[:n], targets[:n])),
                [
                    f"top-k store {path} scored other targets for the example of hash",
                    example_hash,
                    "(its dataset was rebuilt since: score the task again)",
                ],
            )
            arrays = {}
            for name, feature, dtype in (
                (IDS, "ids", tf.int32),
                (LOGPROBS, "logprobs", tf.float32),
            ):
                stored = tf.reshape(tf.io.decode_raw(parsed[feature], dtype), [-1, k])
                covers = tf.debugging.assert_greater_equal(
                    tf.shape(stored)[0],
                    length,
                    message=f"a record of top-k store {path} is shorter than the targets of its "
                    "example: the store scored other targets (score the task again)",
                )
                with tf.control_dependencies([covers, same]):
                    stored = stored[:length]
                padded = tf.pad(stored, [[0, targets_length - length], [0, 0]])
                arrays[name] = tf.ensure_shape(padded, [targets_length, k])
            return {**example, **arrays}

        return examples.map(add, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
