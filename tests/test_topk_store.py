"""The offline teacher's top-k store: records written in shards, read back by example hash
in any order, padded to the run's targets, and the stores that do not fit refused."""

import json

import numpy as np
import pytest
import tensorflow as tf

from dsbs_jax.data import topk_store
from dsbs_jax.data.topk_store import IDS, LOGPROBS, Store, StoreError, StoreWriter

K, LENGTHS, VOCAB = 3, {"inputs": 8, "targets": 5}, 32
TEACHER = {"checkpoint": "/teacher"}


def _records(count: int, seed: int = 0):
    """`count` (hash, targets, ids, logprobs) with 1 to 5 target positions each: targets
    1, 2, ..., as `_examples` makes them."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(count):
        length = 1 + i % LENGTHS["targets"]
        ids = rng.integers(0, VOCAB, (length, K)).astype(np.int32)
        logprobs = -rng.random((length, K)).astype(np.float32)
        targets = np.arange(1, length + 1, dtype=np.int32)
        records.append((1000 + 7 * i, targets, ids, logprobs))
    return records


def _write(root, records, per_shard=2) -> str:
    writer = StoreWriter(str(root), "task_a", "train", records_per_shard=per_shard)
    for record in records:
        writer.add(*record)
    return writer.close(K, LENGTHS, VOCAB, TEACHER)


def _examples(hashes, target_lengths) -> tf.data.Dataset:
    """Examples as the pairing pipeline carries them: targets and a `[1]` hash."""
    return tf.data.Dataset.from_generator(
        lambda: (
            {"targets": np.arange(1, n + 1, dtype=np.int32), "hash": np.array([h], np.int64)}
            for h, n in zip(hashes, target_lengths, strict=True)
        ),
        output_signature={
            "targets": tf.TensorSpec([None], tf.int32),
            "hash": tf.TensorSpec([1], tf.int64),
        },
    )


def test_records_come_back_by_hash_in_any_order_padded_and_cut_to_the_targets(tmp_path):
    records = _records(5)
    path = _write(tmp_path, records)
    shards = sorted(p.name for p in (tmp_path / "task_a" / "train").iterdir())
    assert shards == [
        "hashes.npy",
        "topk.array_record-00000-of-00003",
        "topk.array_record-00001-of-00003",
        "topk.array_record-00002-of-00003",
        "topk.json",
    ]
    metadata = json.loads((tmp_path / "task_a" / "train" / "topk.json").read_text())
    assert metadata["examples"] == 5 and metadata["k"] == K and metadata["lengths"] == LENGTHS
    store = Store(str(tmp_path), "task_a", "train")
    assert store.path == path
    order = [4, 0, 3, 1, 2]
    # Each example's targets: its whole record, or fewer positions (a shorter run).
    target_lengths = [min(len(records[i][2]), 2) if i % 2 else len(records[i][2]) for i in order]
    hashes = [records[i][0] for i in order]
    read = list(store.attach(_examples(hashes, target_lengths), "hash", 6).as_numpy_iterator())
    for i, n, example in zip(order, target_lengths, read, strict=True):
        _, _, ids, logprobs = records[i]
        assert example[IDS].shape == example[LOGPROBS].shape == (6, K)
        np.testing.assert_array_equal(example[IDS][:n], ids[:n])
        np.testing.assert_array_equal(example[LOGPROBS][:n], logprobs[:n])
        assert not example[IDS][n:].any() and not example[LOGPROBS][n:].any()


def test_an_example_without_a_record_or_with_longer_targets_stops_the_pipeline(tmp_path):
    records = _records(3)
    _write(tmp_path, records)
    store = Store(str(tmp_path), "task_a", "train")
    with pytest.raises(
        tf.errors.InvalidArgumentError,
        match="no record in top-k store .* for the example of hash.*999",
    ):
        list(store.attach(_examples([999], [1]), "hash", 5).as_numpy_iterator())
    too_long = len(records[2][1]) + 1
    with pytest.raises(
        tf.errors.InvalidArgumentError, match="shorter than the targets of its example"
    ):
        list(store.attach(_examples([records[2][0]], [too_long]), "hash", 5).as_numpy_iterator())


def test_an_example_whose_targets_were_not_the_ones_scored_stops_the_pipeline(tmp_path):
    """A dataset rebuilt since the store was written keeps its ids (and their hashes) but
    not its targets: joining by hash alone would train on stale log-probabilities."""
    records = _records(3)
    _write(tmp_path, records)
    store = Store(str(tmp_path), "task_a", "train")
    example_hash, targets, _, _ = records[2]
    changed = tf.data.Dataset.from_tensors(
        {"targets": targets[::-1].copy(), "hash": np.array([example_hash], np.int64)}
    )
    with pytest.raises(tf.errors.InvalidArgumentError, match="scored other targets"):
        list(store.attach(changed, "hash", 5).as_numpy_iterator())
    # Its own targets, or a prefix of them, are read.
    for n in (len(targets), 1):
        same = tf.data.Dataset.from_tensors(
            {"targets": targets[:n], "hash": np.array([example_hash], np.int64)}
        )
        assert len(list(store.attach(same, "hash", 5).as_numpy_iterator())) == 1


def test_a_store_of_the_older_format_is_refused(tmp_path):
    _write(tmp_path, _records(1))
    metadata_path = tmp_path / "task_a" / "train" / "topk.json"
    metadata = json.loads(metadata_path.read_text())
    del metadata["format"]
    metadata_path.write_text(json.dumps(metadata))
    with pytest.raises(StoreError, match="before stores kept the targets .* --save_topk 3"):
        Store(str(tmp_path), "task_a", "train")


def test_a_store_is_whole_or_absent_and_refuses_runs_it_does_not_fit(tmp_path):
    with pytest.raises(StoreError, match="no top-k store for task 'task_a', split 'train'"):
        Store(str(tmp_path), "task_a", "train")
    writer = StoreWriter(str(tmp_path), "task_a", "train")
    one = (np.ones(1, np.int32), np.zeros((1, K), np.int32), np.zeros((1, K), np.float32))
    writer.add(1, *one)
    with pytest.raises(StoreError, match="example hash 1 appears twice"):
        writer.add(1, *one)
    with pytest.raises(StoreError, match="2 targets but 1 top-k ids"):
        writer.add(2, np.ones(2, np.int32), *one[1:])
    with pytest.raises(StoreError, match="no top-k store"):  # not closed: not there
        Store(str(tmp_path), "task_a", "train")
    writer.close(K, LENGTHS, VOCAB, TEACHER)
    store = Store(str(tmp_path), "task_a", "train")
    store.check_fits({"inputs": 8, "targets": 3}, VOCAB)  # shorter targets read a prefix
    for lengths, vocab, message in [
        ({"inputs": 16, "targets": 5}, VOCAB, "inputs length 16 \\(the store's: 8\\)"),
        ({"inputs": 8, "targets": 6}, VOCAB, "targets length 6 \\(at most the store's 5\\)"),
        ({"inputs": 8, "targets": 5}, 64, "vocabulary of 64 tokens \\(the teacher's: 32\\)"),
    ]:
        with pytest.raises(StoreError, match=message):
            store.check_fits(lengths, vocab)
    assert topk_store.store_dir("root", "t", "s") == "root/t/s"
    store.check_fits({"inputs": 8, "targets": 5}, VOCAB, 0.3, 7)  # all scored: any subsample
    with pytest.raises(StoreError, match="gs://b/topk: top-k stores are read and written on"):
        Store("gs://b/topk", "task_a", "train")


def test_a_store_of_a_training_subsample_serves_the_runs_it_scored(tmp_path):
    """Subsets of one seed are nested: a store of fraction 0.5, seed 3 covers that seed's
    runs of fraction up to 0.5, and no other."""
    writer = StoreWriter(str(tmp_path), "task_a", "train")
    for record in _records(2):
        writer.add(*record)
    writer.close(K, LENGTHS, VOCAB, TEACHER, 0.5, 3)
    store = Store(str(tmp_path), "task_a", "train")
    assert (store.metadata.train_fraction, store.metadata.subsample_seed) == (0.5, 3)
    for fraction in (0.5, 0.25):
        store.check_fits(LENGTHS, VOCAB, fraction, 3)
    for fraction, seed in ((1.0, 3), (0.6, 3), (0.5, 0)):
        with pytest.raises(StoreError, match=f"TRAIN_FRACTION {fraction} and SEED {seed} "):
            store.check_fits(LENGTHS, VOCAB, fraction, seed)
