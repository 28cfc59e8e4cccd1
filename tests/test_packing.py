"""Packed rows: SeqIO's packed layout, the paired prefix rule, row sizing, and a packed step
that equals the unpadded examples' step (loss and gradients) in every mode."""

import jax
import numpy as np
import pytest
import seqio
import tensorflow as tf
from test_kd_trainer import TEACHER, _teacher_params
from test_trainer import _sgd
from tiny import tiny_config

from dsbs_jax import losses, partitioning
from dsbs_jax.data import packing
from dsbs_jax.data.packing import RowShape
from dsbs_jax.distill import TOPK_IDS, TOPK_LOGPROBS, Distillation
from dsbs_jax.models import T5
from dsbs_jax.trainer import Trainer

CONFIG = tiny_config()


def _example(inputs, targets) -> dict:
    return {"inputs": np.array(inputs, np.int32), "targets": np.array(targets, np.int32)}


def _seqio_packed(examples: list[dict], lengths: dict) -> list[dict]:
    """SeqIO's own `EncDecFeatureConverter(pack=True)` rows for the examples, in order."""
    dataset = tf.data.Dataset.from_generator(
        lambda: iter(examples),
        output_signature={
            "inputs": tf.TensorSpec([None], tf.int32),
            "targets": tf.TensorSpec([None], tf.int32),
        },
    )
    converted = seqio.EncDecFeatureConverter(pack=True)(dataset, lengths)
    return list(converted.as_numpy_iterator())


def test_rows_are_laid_out_as_seqio_packs_them():
    examples = [
        _example([7, 8, 9, 1], [3, 4, 1]),
        _example([5, 1], [6, 1]),
        _example([9, 9, 9, 9, 1], [2, 2, 2, 2, 1]),
        _example([4, 4, 1], [8, 1]),
    ]
    # Row 0 takes the first two; the third fills row 1, the fourth fits only row 1 too.
    shape = RowShape(rows=2, inputs=8, targets=7)
    placed = [(0, examples[0]), (0, examples[1]), (1, examples[2]), (1, examples[3])]
    ours = packing.pack_rows(placed, shape)
    theirs = _seqio_packed(examples, {"inputs": 8, "targets": 7})
    assert len(theirs) == 2
    for name in packing.PACKED_FEATURES:
        expected = np.stack([row[name] for row in theirs])
        np.testing.assert_array_equal(ours[name], expected, err_msg=name)


def _paired_stream(sizes) -> list[dict]:
    """`{label, rationale}` examples whose tokens say which example they are (id + 2)."""
    return [
        {
            "label": _example([i + 2] * a + [1], [i + 2, 1]),
            "rationale": _example([i + 2] * a + [1], [i + 2] * b + [1]),
        }
        for i, (a, b) in enumerate(sizes)
    ]


def _ids(features: dict) -> list[int]:
    tokens = features["encoder_input_tokens"]
    return sorted({int(t) - 2 for t in tokens[tokens > 1]})


def test_a_step_is_the_longest_prefix_that_fits_every_task():
    shapes = {"label": RowShape(2, 10, 6), "rationale": RowShape(2, 10, 8)}
    # Inputs 4 + EOS each: two per row; example 2's rationale (7 + EOS) fills a row alone.
    stream = _paired_stream([(4, 2), (4, 2), (4, 7), (4, 2), (4, 2), (1, 1)])
    steps = list(packing.pack_steps(stream, shapes))
    assert [count for _, count in steps] == [3, 3]
    for features, _ in steps:
        assert _ids(features["label"]) == _ids(features["rationale"])
    assert _ids(steps[0][0]["label"]) == [0, 1, 2]
    assert _ids(steps[1][0]["rationale"]) == [3, 4, 5]
    capped = list(packing.pack_steps(stream, shapes, max_examples=2))
    assert [count for _, count in capped] == [2, 2, 2]


def test_an_example_longer_than_a_row_is_named():
    shapes = {"label": RowShape(1, 4, 4)}
    stream = [{"label": _example([5] * 6 + [1], [1])}]
    with pytest.raises(packing.ExampleTooLong, match=r"\(7, 1\)"):
        list(packing.pack_steps(stream, shapes))


@pytest.mark.parametrize("examples, multiple", [(8, 1), (32, 4), (64, 2)])
def test_planned_rows_hold_the_batch_size_on_average(examples, multiple):
    rng = np.random.default_rng(examples)
    inputs = rng.integers(10, 60, 1500)
    lengths = {
        "label": np.stack([inputs, rng.integers(2, 6, 1500)], 1),
        "rationale": np.stack([inputs, rng.integers(5, 80, 1500)], 1),
    }
    caps = {"label": (64, 6), "rationale": (64, 80)}
    shapes = packing.plan_rows(lengths, caps, examples, multiple)
    for task, shape in shapes.items():
        assert shape.rows % multiple == 0
        assert shape.inputs >= caps[task][0] and shape.targets >= caps[task][1]
    # Measured on other examples of the same distribution: the plan generalises.
    stream = _paired_stream(
        zip(rng.integers(9, 59, 20 * examples), rng.integers(4, 79, 20 * examples), strict=True)
    )
    counts = [count for _, count in packing.pack_steps(stream, shapes)][:-1]
    assert np.mean(counts) == pytest.approx(examples, rel=0.1)
    padded = sum(caps[t][0] + caps[t][1] for t in caps)
    packed = sum(s.positions() for s in shapes.values()) / examples
    assert packed < 0.75 * padded


# -------------------------------------------------------------------------------------------
# A packed step is the unpadded examples' step
# -------------------------------------------------------------------------------------------

CAPS = {"label": (12, 4), "rationale": (12, 9)}


def _random_examples(rng: np.random.Generator, count: int) -> list[dict]:
    """`{task: example}` pairs sharing inputs (with task prefixes) as the dsbs tasks do."""
    examples = []
    for _ in range(count):
        inputs = list(rng.integers(3, CONFIG.vocab_size, rng.integers(2, 11)))
        pair = {}
        for prefix, (task, (_, cap)) in enumerate(CAPS.items()):
            targets = list(rng.integers(2, CONFIG.vocab_size, rng.integers(1, cap)))
            pair[task] = _example([prefix + 2, *inputs, 1], [*targets, 1])
        examples.append(pair)
    return examples


def _padded(examples: list[dict], task: str) -> dict:
    """The examples as SeqIO's unpacked converter lays them out: one per row, padded."""
    n_in, n_out = CAPS[task]
    rows = {name: [] for name in ("inputs", "targets")}
    for pair in examples:
        for name, cap in (("inputs", n_in), ("targets", n_out)):
            rows[name].append(np.pad(pair[task][name], (0, cap - len(pair[task][name]))))
    targets = np.stack(rows["targets"])
    features = {
        "encoder_input_tokens": np.stack(rows["inputs"]),
        "decoder_target_tokens": targets,
        "decoder_input_tokens": np.pad(targets[:, :-1], ((0, 0), (1, 0))),
        "decoder_loss_weights": (targets > 0).astype(np.float32),
    }
    for name in (TOPK_IDS, TOPK_LOGPROBS):
        if name in examples[0][task]:
            stored = [pair[task][name] for pair in examples]
            features[name] = np.stack([np.pad(s, ((0, n_out - len(s)), (0, 0))) for s in stored])
    return features


def _with_teacher_top_k(examples: list[dict], k: int) -> list[dict]:
    """Each example with an offline teacher's top-k tokens on its own targets (one
    teacher-forced pass per task over the padded examples: padding changes no real
    position's logits)."""
    params = _teacher_params()
    for task in CAPS:
        features = _padded(examples, task)
        inputs = {name: features[name] for name in ("encoder_input_tokens", "decoder_input_tokens")}
        logits = T5(TEACHER).apply({"params": params}, **inputs)
        logprobs, ids = map(np.asarray, jax.lax.top_k(jax.nn.log_softmax(logits), k))
        for row, pair in enumerate(examples):
            length = len(pair[task]["targets"])
            pair[task][TOPK_IDS], pair[task][TOPK_LOGPROBS] = (
                ids[row, :length],
                logprobs[row, :length],
            )
    return examples


def _step(mode, batch, microbatches=1, distillation=None, teacher=None):
    weights = losses.task_weights(mode, 0.3)
    mesh = partitioning.make_mesh(1)
    trainer = Trainer(
        CONFIG, _sgd(), mesh, weights, num_microbatches=microbatches, distillation=distillation
    )
    state = trainer.create_state(seed=0)
    before = jax.device_get(state.params)
    batch = partitioning.global_batch(mesh, {task: batch[task] for task in weights})
    placed = None if teacher is None else trainer.distiller.place_teacher(teacher)
    state, metrics = trainer.run_train_step(state, batch, placed)
    grads = jax.tree.map(np.subtract, before, jax.device_get(state.params))  # SGD, rate 1
    return jax.device_get(metrics), grads


CASES = {
    "standard": dict(mode="standard"),
    "dsbs": dict(mode="dsbs"),
    "cot": dict(mode="cot"),
    "dsbs, 2 microbatches": dict(mode="dsbs", microbatches=2),
    "dsbs, offline top-k teacher": dict(mode="dsbs", topk=16),
    "dsbs, online teacher, KL and hidden states, 2 microbatches": dict(
        mode="dsbs", online=True, microbatches=2
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_a_packed_step_equals_the_padded_step_of_the_same_examples(case):
    options = dict(CASES[case])
    mode, topk, online = options.pop("mode"), options.pop("topk", 0), options.pop("online", 0)
    examples = _random_examples(np.random.default_rng(3), 16)
    distillation, teacher = None, None
    if topk:
        examples = _with_teacher_top_k(examples, topk)
        distillation = Distillation(None, 0.5, 2.0)
    if online:
        teacher = _teacher_params()
        layers = (("encoder:-1", "encoder:0"), ("decoder:-1", "decoder:-1"))
        distillation = Distillation(
            TEACHER, 0.5, 2.0, dtype="float32", hidden_weight=0.2, hidden_layers=layers
        )
    # 8 rows: split over the 4 devices of the data axis, and into 2 microbatches.
    shapes = {"label": RowShape(8, 40, 12), "rationale": RowShape(8, 40, 24)}
    (packed, count), *rest = packing.pack_steps(examples, shapes)
    assert count == len(examples) and not rest, "the test's rows hold all its examples"
    assert packed["rationale"]["encoder_segment_ids"].max() > 1, "rows hold several examples"
    padded = {task: _padded(examples, task) for task in CAPS}
    packed_metrics, packed_grads = _step(
        mode, packed, distillation=distillation, teacher=teacher, **options
    )
    padded_metrics, padded_grads = _step(
        mode, padded, distillation=distillation, teacher=teacher, **options
    )
    assert set(packed_metrics) == set(padded_metrics)
    for name, value in padded_metrics.items():
        if name != "param_norm":
            assert packed_metrics[name] == pytest.approx(value, rel=2e-5, abs=1e-6), name
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-6),
        packed_grads,
        padded_grads,
    )
