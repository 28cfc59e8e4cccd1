"""Paired label/rationale batches: alignment, determinism, restart, sharding; packing."""

import numpy as np
import pytest
import seqio
import tensorflow as tf

from dsbs_jax.data import packing, pairing

LABEL = {"inputs": 96, "targets": 8}
RATIONALE = {"inputs": 96, "targets": 128}
DSBS = {
    "label": ("dsbs_synthetic_label_gt", LABEL),
    "rationale": ("dsbs_synthetic_rationale", RATIONALE),
}


def hashes_to_ids(task_name: str, split: str) -> dict[int, str]:
    source = seqio.get_mixture_or_task(task_name).source
    ids = [ex["id"] for ex in source.get_dataset(split, shuffle=False).as_numpy_iterator()]
    return {int(pairing.example_hash(tf.constant(i)).numpy()): i.decode() for i in ids}


def take(dataset: tf.data.Dataset, count: int) -> list[dict]:
    return list(dataset.take(count).as_numpy_iterator())


def test_label_and_rationale_come_from_the_same_examples(registered_tasks):
    batches = take(pairing.paired_batches(DSBS, "train", batch_size=8, seed=3), 4)
    ids = hashes_to_ids("dsbs_synthetic_label_gt", "train")
    task = seqio.get_mixture_or_task("dsbs_synthetic_label_gt")
    vocabulary = task.output_features["inputs"].vocabulary
    for batch in batches:
        label, rationale = batch["label"], batch["rationale"]
        np.testing.assert_array_equal(label[pairing.EXAMPLE_HASH], rationale[pairing.EXAMPLE_HASH])
        assert all(int(h) in ids for h in label[pairing.EXAMPLE_HASH][:, 0])
        for row in range(8):
            # Same example: the inputs differ only by their prefix.
            question = vocabulary.decode(label["encoder_input_tokens"][row].tolist())
            assert question.startswith("predict: ")
            explained = vocabulary.decode(rationale["encoder_input_tokens"][row].tolist())
            assert explained == "explain: " + question.removeprefix("predict: ")
        assert rationale["decoder_target_tokens"].shape == (8, 128)
        assert (label["decoder_loss_weights"].sum(1) > 0).all()
    hashes = [tuple(b["label"][pairing.EXAMPLE_HASH][:, 0]) for b in batches]
    assert len({h for batch in hashes for h in batch}) == 32  # no repeats within an epoch


def test_deterministic_for_a_seed_and_restartable(registered_tasks):
    def stream(seed, start_step=0):
        batches = pairing.paired_batches(DSBS, "train", 4, seed=seed, start_step=start_step)
        return [b["label"][pairing.EXAMPLE_HASH][:, 0].tolist() for b in take(batches, 6)]

    uninterrupted = stream(seed=5)
    assert stream(seed=5) == uninterrupted
    assert stream(seed=6) != uninterrupted
    assert stream(seed=5, start_step=3)[:3] == uninterrupted[3:]


def test_two_shards_are_disjoint_and_cover_the_split(registered_tasks):
    def shard_ids(index):
        batches = pairing.paired_batches(
            DSBS, "train", 1, shard=seqio.ShardInfo(index, 2), shuffle=False, num_epochs=1
        )
        return [int(b["label"][pairing.EXAMPLE_HASH][0, 0]) for b in batches.as_numpy_iterator()]

    first, second = shard_ids(0), shard_ids(1)
    assert not set(first) & set(second)
    assert sorted(first + second) == sorted(hashes_to_ids("dsbs_synthetic_label_gt", "train"))


def test_tasks_that_keep_different_examples_cannot_be_paired(registered_tasks):
    # svamp test: the gold-label task keeps all 200 rows, the rationale task the 198 parsed.
    tasks = {
        "label": ("dsbs_svamp_label_gt", LABEL),
        "rationale": ("dsbs_svamp_rationale", RATIONALE),
    }
    batches = pairing.paired_batches(tasks, "test", 50, shuffle=False, num_epochs=1)
    with pytest.raises(tf.errors.InvalidArgumentError, match="lost alignment"):
        take(batches, 4)
    with pytest.raises(ValueError, match="mixture"):
        pairing.paired_batches({"label": ("dsbs_label_gt", LABEL)}, "train", 4)


def test_independent_packed_batches_keep_segments_apart(registered_tasks):
    long_rows = {"inputs": 256, "targets": 256}  # room for several examples per row
    tasks = {"rationale": ("dsbs_synthetic_rationale", long_rows)}
    batches = pairing.independent_batches(tasks, "train", batch_size=2, seed=0, pack=True)
    batch = take(batches, 1)[0]["rationale"]
    for row in range(2):
        segments = batch["decoder_segment_ids"][row]
        positions = batch["decoder_positions"][row]
        targets = batch["decoder_target_tokens"][row]
        inputs = batch["decoder_input_tokens"][row]
        assert segments.max() >= 2  # several examples share the row
        for segment in range(1, segments.max() + 1):
            where = np.flatnonzero(segments == segment)
            np.testing.assert_array_equal(positions[where], np.arange(len(where)))
            assert targets[where][-1] == 1  # each packed example ends with its own EOS
            assert inputs[where][0] == 0  # and its decoder input starts afresh
        encoder_segments = batch["encoder_segment_ids"][row]
        assert set(np.unique(encoder_segments)) - {0} == set(range(1, segments.max() + 1))


def test_packed_steps_pair_the_same_examples_and_restart_where_they_stopped(registered_tasks):
    shapes = {"label": packing.RowShape(2, 96, 16), "rationale": packing.RowShape(2, 96, 128)}

    def steps(start_example=0, count=4):
        stream = pairing.packed_paired_batches(
            DSBS, "train", shapes, seed=5, start_example=start_example
        )
        return [next(stream) for _ in range(count)]

    uninterrupted = steps()
    task = seqio.get_mixture_or_task("dsbs_synthetic_label_gt")
    vocabulary = task.output_features["inputs"].vocabulary

    def questions(features, prefix):
        """Each segment's input without its task prefix."""
        texts = []
        for tokens, segments in zip(
            features["encoder_input_tokens"], features["encoder_segment_ids"], strict=True
        ):
            for segment in range(1, segments.max() + 1):
                text = vocabulary.decode(tokens[segments == segment].tolist())
                assert text.startswith(prefix)
                texts.append(text.removeprefix(prefix))
        return sorted(texts)

    for features, count in uninterrupted:
        label = questions(features["label"], "predict: ")
        assert len(label) == count
        assert questions(features["rationale"], "explain: ") == label
    consumed = sum(count for _, count in uninterrupted[:2])
    for (resumed, _), (expected, _) in zip(steps(consumed, 2), uninterrupted[2:], strict=True):
        for task in expected:
            for name, value in expected[task].items():
                np.testing.assert_array_equal(resumed[task][name], value, err_msg=name)
