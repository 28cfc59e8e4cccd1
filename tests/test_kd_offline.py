"""The offline teacher end to end on the synthetic task: `dsbs-annotate --save_topk` stores
a trained tiny teacher's own top-k, and a student distilled from the store follows the
loss curve of one distilled from the same teacher online."""

import numpy as np
import pytest
import runs

from dsbs_jax import checkpoints
from dsbs_jax.writers import read_scalars

TASKS = "dsbs_synthetic_label_llm,dsbs_synthetic_rationale"
LENGTHS = ["--max_input_length", "64", "--max_tokens", "80"]  # the quickstart's inputs, rationales
VOCAB = 256  # the synthetic task's own vocabulary; k = VOCAB keeps every token
STEPS = 60
# The students train on a tenth of the training set, and the store scores only that tenth.
FRACTION = "0.1"


@pytest.fixture(scope="module")
def teacher(tmp_path_factory, tfds_data_dir):
    """A tiny model trained on the task for a while: a teacher with opinions."""
    model_dir = tmp_path_factory.mktemp("teacher")
    runs.run(
        runs.flags(
            model_dir, tfds_data_dir, 120, "--gin.CHECKPOINT_PERIOD=1000", runs.NO_FINAL_EVAL
        )
    )
    return model_dir / "checkpoints"


def _annotate(output_dir, tfds_data_dir, teacher, k, *extra):
    flags = ["--save_topk", str(k), "--tasks", TASKS, "--backend", "seq2seq"]
    flags += ["--checkpoint", str(teacher), "--split", "train", "--output_dir", str(output_dir)]
    flags += ["--data_dir", str(tfds_data_dir), "--batch_size", "16", *LENGTHS, *extra]
    flags += ["--train_fraction", FRACTION]
    return runs.run(flags, binary="annotate")


@pytest.fixture(scope="module")
def store(tmp_path_factory, tfds_data_dir, teacher):
    output_dir = tmp_path_factory.mktemp("annotated")
    _annotate(output_dir, tfds_data_dir, teacher, VOCAB)
    return output_dir / "topk"


@pytest.mark.slow
def test_the_store_holds_the_teachers_own_top_k_for_the_tasks_targets(
    store, teacher, registered_tasks
):
    import jax
    import tensorflow as tf

    from dsbs_jax.data import pairing, topk_store
    from dsbs_jax.models import T5

    config, params = checkpoints.load(teacher)
    lengths = {"inputs": 64, "targets": 80}
    for task in TASKS.split(","):
        saved = topk_store.Store(str(store), task, "train")
        assert saved.metadata.k == VOCAB and saved.metadata.lengths == lengths
        assert (saved.metadata.train_fraction, saved.metadata.subsample_seed) == (0.1, 0)
        scored = tf.constant(saved.hashes)
        every = pairing.task_examples(task, "train", lengths)  # the whole split is registered
        assert 0.08 < saved.metadata.examples / int(every.reduce(0, lambda n, _: n + 1)) < 0.12
        examples = every.filter(lambda ex, s=scored: tf.reduce_any(ex["example_hash"][0] == s))
        examples = examples.take(4).batch(4)
        batch = next(examples.as_numpy_iterator())
        logits = T5(config).apply(
            {"params": params}, batch["encoder_input_tokens"], batch["decoder_input_tokens"]
        )
        logprobs = np.asarray(jax.nn.log_softmax(np.asarray(logits, np.float64)))
        read = saved.attach(
            tf.data.Dataset.from_tensor_slices(
                {"targets": batch["decoder_target_tokens"], "hash": batch["example_hash"]}
            ).map(lambda ex: {**ex, "targets": tf.boolean_mask(ex["targets"], ex["targets"] > 0)}),
            "hash",
            80,
        )
        for row, example in enumerate(read.as_numpy_iterator()):
            length = int(np.count_nonzero(batch["decoder_target_tokens"][row]))
            ids = example[topk_store.IDS][:length]
            # The stored ids, most likely first, and their log-probabilities are the teacher's.
            expected = np.take_along_axis(logprobs[row, :length], ids, axis=-1)
            np.testing.assert_allclose(example[topk_store.LOGPROBS][:length], expected, atol=1e-4)
            assert (np.diff(expected, axis=-1) <= 1e-6).all()
            assert sorted(ids[0]) == list(range(VOCAB))


def _distil(model_dir, tfds_data_dir, *teacher_flags):
    flags = ["--gin.KD_WEIGHT=1.0", "--gin.KD_TEMPERATURE=2.0", "--gin.CHECKPOINT_PERIOD=1000"]
    flags += [f"--gin.TRAIN_FRACTION={FRACTION}", runs.NO_FINAL_EVAL]
    runs.run(runs.flags(model_dir, tfds_data_dir, STEPS, *flags, *teacher_flags))
    return {tag: read_scalars(model_dir / "train", tag) for tag in ("loss", "loss/kd")}


@pytest.mark.slow
def test_offline_top_k_gives_the_online_teachers_loss_curve(
    store, teacher, tmp_path, tfds_data_dir
):
    online = _distil(
        tmp_path / "online",
        tfds_data_dir,
        f"--gin.TEACHER_CHECKPOINT_PATH='{teacher}'",
        "--gin.train.teacher_dtype='float32'",
    )
    offline = _distil(tmp_path / "offline", tfds_data_dir, f"--gin.TEACHER_TOPK_DIR='{store}'")
    for tag in ("loss", "loss/kd"):
        assert sorted(offline[tag]) == sorted(online[tag]) == list(range(1, STEPS + 1))
        np.testing.assert_allclose(
            [offline[tag][s] for s in range(1, STEPS + 1)],
            [online[tag][s] for s in range(1, STEPS + 1)],
            rtol=1e-3,
            err_msg=tag,
        )
    # The student moves towards the teacher: its KL falls.
    kd = [online["loss/kd"][s] for s in range(1, STEPS + 1)]
    assert np.mean(kd[-5:]) < 0.5 * np.mean(kd[:3]), kd


def test_a_run_on_more_than_the_scored_subsample_is_refused_before_training(
    store, tmp_path, tfds_data_dir
):
    import subprocess

    flags = runs.flags(tmp_path, tfds_data_dir, STEPS, "--gin.KD_WEIGHT=1.0")
    flags += [f"--gin.TEACHER_TOPK_DIR='{store}'", "--gin.TRAIN_FRACTION=0.2"]
    result = subprocess.run(
        runs.command(flags), cwd=runs.ROOT, env=runs.environment(), capture_output=True, text=True
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert "TRAIN_FRACTION 0.2 and SEED 0 (the store scored the subsample of fraction 0.1" in (
        result.stderr
    )
    assert not (tmp_path / "checkpoints").exists()


def test_save_topk_refuses_what_it_cannot_score(tmp_path, tfds_data_dir):
    import subprocess

    def refused(*flags):
        result = subprocess.run(
            runs.command(list(flags), "annotate"), cwd=runs.ROOT, capture_output=True, text=True
        )
        assert result.returncode == 2, result.stderr
        return result.stderr

    base = ["--save_topk", "4", "--split", "train", "--output_dir", str(tmp_path)]
    assert "needs --backend seq2seq and --checkpoint" in refused(*base, "--tasks", TASKS)
    seq2seq = [*base, "--backend", "seq2seq", "--checkpoint", str(tmp_path / "none")]
    assert "needs --tasks" in refused(*seq2seq)
    assert "--save_topk must be at least 1" in refused(*seq2seq[:1], "0", *seq2seq[2:])
    fraction = refused(*seq2seq, "--tasks", TASKS, "--train_fraction", "0")
    assert "--train_fraction must be in (0, 1], got 0.0" in fraction
    assert "--input and --prompt are required" in refused("--split", "train", "--output_dir", "x")
