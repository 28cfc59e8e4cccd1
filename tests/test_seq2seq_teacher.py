"""The in-process seq2seq teacher on a tiny random T5: it decodes exactly what `generate` gives
for the few-shot prompt (cut from its start), and its samples are reproducible."""

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

from dsbs_jax import checkpoints, decoding
from dsbs_jax.models import T5
from dsbs_jax.teacher.prompts import load_prompt
from dsbs_jax.teacher.seq2seq import Seq2SeqTeacher
from dsbs_jax.tokenizer import Tokenizer, pack

INPUTS = [
    "Ava has 20 cards. She gives away 4 cards. How many cards does Ava have now?",
    "Omar has 7 pencils. He buys 8 more pencils. How many pencils does Omar have now?",
    "The toy shop has 16 balls. It sells 5 balls. How many balls does the toy shop have now?",
    "Nina has 10 shells. She finds 3 more shells. How many shells does Nina have now?",
    "Ravi has 18 apples. He loses 9 apples. How many apples does Ravi have now?",
]
MAX_INPUT, MAX_LENGTH, BATCH = 64, 8, 4  # the 4 test devices make a data axis of 4


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


def test_greedy_outputs_are_generate_on_the_prompts_end(model, small_vocabulary, prompt, caplog):
    _, config, params = model
    processor = sentencepiece.SentencePieceProcessor(model_file=small_vocabulary)
    tokens = np.zeros((len(INPUTS), MAX_INPUT), np.int32)
    for row, text in zip(tokens, INPUTS, strict=True):
        ids = processor.encode(prompt.text(text))
        assert len(ids) > MAX_INPUT  # so the prompt is cut, keeping its end: the query
        row[:] = [*ids[-(MAX_INPUT - 1) :], decoding.EOS_ID]
    direct = np.asarray(decoding.generate(config, params, tokens, MAX_LENGTH))
    expected = [Tokenizer(small_vocabulary).decode(ids) for ids in direct]
    assert all(expected)

    teacher = make_teacher(model, small_vocabulary, prompt)
    with caplog.at_level(logging.WARNING):
        assert teacher.generate(INPUTS, samples=3) == [[text] * 3 for text in expected]
        assert teacher.generate(INPUTS[:2], samples=1) == [[text] for text in expected[:2]]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "5 of 5 prompts are longer than max_input_length 64" in warnings[0]


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
