"""The in-process seq2seq teacher on a tiny T5: it decodes exactly what `generate` gives for
the few-shot prompt (its first exemplars that fit, then the query), its samples are
reproducible and differ between batches, and a T5 trained to write one rationale gets that
rationale extracted by dsbs-annotate."""

import json
import logging
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sentencepiece
from flax.core import meta
from tiny import tiny_config

from dsbs_jax import checkpoints, decoding, losses, optimizers, partitioning
from dsbs_jax.data import release
from dsbs_jax.models import T5
from dsbs_jax.programs import annotate
from dsbs_jax.teacher.prompts import load_prompt
from dsbs_jax.teacher.seq2seq import Seq2SeqTeacher
from dsbs_jax.tokenizer import Tokenizer, pack
from dsbs_jax.trainer import Trainer

INPUTS = [
    "Ava has 20 cards. She gives away 4 cards. How many cards does Ava have now?",
    "Omar has 7 pencils. He buys 8 more pencils. How many pencils does Omar have now?",
    "The toy shop has 16 balls. It sells 5 balls. How many balls does the toy shop have now?",
    "Nina has 10 shells. She finds 3 more shells. How many shells does Nina have now?",
    "Ravi has 18 apples. He loses 9 apples. How many apples does Ravi have now?",
]
# The synthetic prompt's query is about 30 tokens and each exemplar 70 to 120: 128 holds the
# first exemplar and the query. The 4 test devices make a data axis of 4.
MAX_INPUT, MAX_LENGTH, BATCH = 128, 8, 4


def save_tiny_t5(path, vocab_size: int):
    config = tiny_config(vocab_size=vocab_size)
    tokens = jnp.ones((1, 4), jnp.int32)
    params = meta.unbox(T5(config).init(jax.random.key(1), tokens, tokens)["params"])
    params = jax.tree.map(np.asarray, params)
    checkpoints.save_orbax(path, config, params)
    return str(path), config, params


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return save_tiny_t5(tmp_path_factory.mktemp("teacher") / "checkpoint", vocab_size=2048)


@pytest.fixture(scope="module")
def prompt():
    return load_prompt("synthetic")


def make_teacher(model, vocabulary, prompt, **options) -> Seq2SeqTeacher:
    defaults = {"max_input_length": MAX_INPUT, "max_length": MAX_LENGTH, "batch_size": BATCH}
    return Seq2SeqTeacher(model[0], vocabulary, prompt, **(defaults | options))


def warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_greedy_outputs_are_generate_on_the_first_exemplars_that_fit(
    model, small_vocabulary, prompt, caplog
):
    _, config, params = model
    processor = sentencepiece.SentencePieceProcessor(model_file=small_vocabulary)
    tokens = np.zeros((len(INPUTS), MAX_INPUT), np.int32)
    for row, text in zip(tokens, INPUTS, strict=True):
        ids = processor.encode(prompt.text(text, exemplars=1))
        # The first exemplar and EOS fit, the second does not: whole exemplars are dropped.
        assert len(ids) + 1 <= MAX_INPUT < len(processor.encode(prompt.text(text, 2))) + 1
        row[: len(ids) + 1] = [*ids, decoding.EOS_ID]
    teacher = make_teacher(model, small_vocabulary, prompt)
    np.testing.assert_array_equal(teacher._encode(INPUTS), tokens)
    direct = np.asarray(decoding.generate(config, params, tokens, MAX_LENGTH))
    expected = [Tokenizer(small_vocabulary).decode(ids) for ids in direct]
    assert all(expected)

    with caplog.at_level(logging.WARNING):
        assert teacher.generate(INPUTS, samples=3) == [[text] * 3 for text in expected]
        assert teacher.generate(INPUTS[:2], samples=1) == [[text] for text in expected[:2]]
    assert warnings(caplog) == [
        "5 of 5 prompts do not fit max_input_length 128 with all 5 exemplars: their last "
        "exemplars are dropped until they fit; shown once"
    ]


def test_only_a_query_too_long_alone_is_cut_from_its_start(model, small_vocabulary, prompt, caplog):
    processor = sentencepiece.SentencePieceProcessor(model_file=small_vocabulary)
    teacher = make_teacher(model, small_vocabulary, prompt, max_input_length=16)
    with caplog.at_level(logging.WARNING):
        tokens = teacher._encode(INPUTS)
        teacher._encode(INPUTS)
    for row, text in zip(tokens, INPUTS, strict=True):
        ids = processor.encode(prompt.query(text))
        assert len(ids) > 16
        np.testing.assert_array_equal(row, [*ids[-15:], decoding.EOS_ID])
    assert len(warnings(caplog)) == 2
    assert "5 of 5 queries alone are longer than max_input_length 16" in warnings(caplog)[1]
    assert "the query itself loses its first tokens; shown once" in warnings(caplog)[1]


def test_samples_are_reproducible_for_a_seed(model, small_vocabulary, prompt):
    teacher = make_teacher(model, small_vocabulary, prompt, temperature=1.0, seed=3)
    outputs = teacher.generate(INPUTS, samples=2)
    assert [len(samples) for samples in outputs] == [2] * len(INPUTS)
    assert all(isinstance(text, str) for samples in outputs for text in samples)
    assert all(first != second for first, second in outputs)  # each sample is a new draw
    assert teacher.generate(INPUTS, samples=2) == outputs
    again = make_teacher(model, small_vocabulary, prompt, temperature=1.0, seed=3)
    assert again.generate(INPUTS, samples=2) == outputs
    other = make_teacher(model, small_vocabulary, prompt, temperature=1.0, seed=4)
    assert other.generate(INPUTS, samples=2) != outputs


def test_each_batch_draws_by_its_inputs_not_its_position(model, small_vocabulary, prompt):
    """Annotate calls `generate` once per chunk: batches at the same position of two chunks
    must not share their noise, and the same batch of inputs must draw the same."""
    first, second, third = INPUTS[:3]
    teacher = make_teacher(model, small_vocabulary, prompt, temperature=1.0, seed=3)
    alone = teacher.generate([first, second, second, second], samples=2)
    other = teacher.generate([first, third, third, third], samples=2)
    assert alone[0] != other[0]  # the same input at the same position, in another batch
    later = teacher.generate([third] * 4 + [first, second, second, second], samples=2)
    assert later[4:] == alone  # the same batch of inputs as the second batch of a call


def test_description_names_what_decides_the_outputs(model, small_vocabulary, prompt):
    teacher = make_teacher(model, small_vocabulary, prompt, temperature=0.5, seed=7)
    assert teacher.description == {
        "backend": "seq2seq",
        "checkpoint": model[0],
        "vocabulary": small_vocabulary,
        "max_input_length": MAX_INPUT,
        "max_length": MAX_LENGTH,
        "temperature": 0.5,
        "seed": 7,
    }


def test_bad_settings_are_errors(model, small_vocabulary, prompt, tmp_path):
    with pytest.raises(ValueError, match="batch_size 6 must be a multiple of the mesh's data"):
        make_teacher(model, small_vocabulary, prompt, batch_size=6)
    small, _, _ = save_tiny_t5(tmp_path / "small", vocab_size=64)
    with pytest.raises(ValueError, match="2000 pieces, more than the checkpoint's 64"):
        Seq2SeqTeacher(small, small_vocabulary, prompt)
    with pytest.raises(ValueError, match="samples must be at least 1"):
        make_teacher(model, small_vocabulary, prompt).generate(INPUTS, samples=0)


def test_pack_cuts_the_start_or_the_end():
    ids = [[5, 6, 7, 8], [9]]
    np.testing.assert_array_equal(pack(ids, 3), [[5, 6, 1], [9, 1, 0]])
    np.testing.assert_array_equal(pack(ids, 3, keep_end=True), [[7, 8, 1], [9, 1, 0]])


def test_import_needs_no_tensorflow():
    code = (
        "import sys, dsbs_jax.teacher.seq2seq; "
        "assert 'tensorflow' not in sys.modules, 'tensorflow imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


TARGET = "Two and one make three. So the answer is 3."


def train_to_write_target(path, vocabulary: str, steps: int = 40) -> str:
    """A tiny T5 trained to write TARGET whatever its input (random tokens in training)."""
    config = tiny_config(vocab_size=2048)
    mesh = partitioning.make_mesh(1)
    weights = losses.task_weights("standard", 1.0)
    trainer = Trainer(config, optimizers.adamw(steps, learning_rate=3e-2), mesh, weights)
    target = np.array([[*Tokenizer(vocabulary).ids([TARGET])[0], decoding.EOS_ID]] * 8, np.int32)
    rng = np.random.default_rng(0)
    state = trainer.create_state(seed=0)
    for _ in range(steps):
        features = {
            "encoder_input_tokens": rng.integers(2, 2048, (8, 64), dtype=np.int32),
            "decoder_input_tokens": np.pad(target[:, :-1], ((0, 0), (1, 0))),
            "decoder_target_tokens": target,
            "decoder_loss_weights": np.ones_like(target),
        }
        batch = partitioning.global_batch(mesh, {"label": features})
        state, metrics = trainer.run_train_step(state, batch)
    assert float(metrics["loss"]) < 0.05
    params = jax.tree.map(np.asarray, jax.device_get(state.params))
    checkpoints.save_orbax(path, config, params)
    return str(path)


@pytest.mark.slow
def test_annotate_extracts_the_rationale_a_trained_teacher_writes(small_vocabulary, tmp_path):
    checkpoint = train_to_write_target(tmp_path / "checkpoint", small_vocabulary)
    rows = [{"id": f"q{i}", "question": text, "answer": "3"} for i, text in enumerate(INPUTS)]
    source = tmp_path / "rows.jsonl"
    source.write_text("".join(json.dumps(row) + "\n" for row in rows))
    output_dir = tmp_path / "annotated"
    status = annotate.main(
        [
            *("--backend", "seq2seq", "--checkpoint", checkpoint),
            *("--vocabulary", small_vocabulary, "--prompt", "synthetic"),
            *("--input", f"jsonl:{source}", "--dataset", "synthetic", "--split", "test"),
            *("--output_dir", str(output_dir), "--batch_size", "4"),
            *("--max_input_length", "64", "--max_tokens", "24"),
        ]
    )
    assert status == 0
    lines = (output_dir / "annotations_test.jsonl").read_text().splitlines()
    annotated = [json.loads(line) for line in lines]
    assert [row["id"] for row in annotated] == [row["id"] for row in rows]
    for row in annotated:
        assert row["outputs"] == [TARGET]
        assert row["rationale"] == "Two and one make three."
        assert row["label"] == row["vote"] == "3"

    examples = release.read_split(output_dir, "synthetic", "test")
    assert [e.id for e in examples] == [row["id"] for row in rows]
    for example in examples:
        assert example.teacher_parsed
        assert (example.teacher_rationale, example.teacher_label) == (
            "Two and one make three.",
            "3",
        )
