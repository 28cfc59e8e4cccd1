"""dsbs-infer on a tiny random student: same predictions as decoding directly, SeqIO's
tokenisation, resuming, bad lines, missing files, and no TensorFlow on import."""

import io
import json
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.core import meta
from tiny import tiny_config

from dsbs_jax import checkpoints, decoding, progress
from dsbs_jax.models import T5
from dsbs_jax.prefixes import LABEL_PREFIX, RATIONALE_PREFIX
from dsbs_jax.programs import infer

TEXTS = [
    "If Ann has 3 apples and buys 4 more, how many apples does she have?",
    "The cat sat on the mat. Premise and hypothesis: a cat is sitting.",
    "Where would you put a plate after washing it? cupboard, sink, floor",
    "A train travels 60 miles in 2 hours. What is its speed?",
    "Tom had 12 marbles and lost 5.",
    "Übergrößen café — naïve résumé with some unicode.",
    "What do people use to cut paper? scissors, glue, tape",
    "The weather is sunny and warm today.",
    "How many legs do three spiders have?",
    "A man is playing a guitar on stage.",
]
MAX_INPUT = 32
LABEL_LENGTH, RATIONALE_LENGTH = 5, 8


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    """A random tiny T5 with room for the 2,000-piece vocabulary, saved as Orbax."""
    config = tiny_config(vocab_size=2048)
    tokens = jnp.ones((1, 4), jnp.int32)
    params = meta.unbox(T5(config).init(jax.random.key(0), tokens, tokens)["params"])
    params = jax.tree.map(np.asarray, params)
    path = tmp_path_factory.mktemp("student") / "checkpoint"
    checkpoints.save_orbax(path, config, params)
    return str(path), config, params


@pytest.fixture(scope="module")
def vocabulary(small_vocabulary):
    import seqio

    return seqio.SentencePieceVocabulary(small_vocabulary)


def write_inputs(path, lines) -> str:
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


def good_lines() -> list[str]:
    """Ids for most lines; lines 3 and 7 have none, so their line numbers are their ids."""
    return [
        json.dumps({"input": text} if i in (2, 6) else {"id": f"ex{i}", "input": text})
        for i, text in enumerate(TEXTS)
    ]


def argv(student, small_vocabulary, input_path, output_path, *extra) -> list[str]:
    return [
        "--checkpoint",
        student[0],
        "--vocabulary",
        small_vocabulary,
        "--input",
        str(input_path),
        "--output_file",
        str(output_path),
        "--batch_size",
        "4",
        "--max_input_length",
        str(MAX_INPUT),
        "--label_length",
        str(LABEL_LENGTH),
        "--rationale_length",
        str(RATIONALE_LENGTH),
        *extra,
    ]


def read_rows(path) -> list[dict]:
    return [json.loads(line) for line in open(path, encoding="utf-8")]


def seqio_tokens(vocabulary, texts: list[str]) -> np.ndarray:
    tokens = np.zeros((len(texts), MAX_INPUT), np.int32)
    for row, text in zip(tokens, texts, strict=True):
        ids = [*vocabulary.encode(text)[: MAX_INPUT - 1], 1]
        row[: len(ids)] = ids
    return tokens


def direct_predictions(student, vocabulary, prefix: str, max_length: int) -> list[str]:
    """What decoding the whole input at once, without dsbs-infer, gives."""
    _, config, params = student
    tokens = seqio_tokens(vocabulary, [prefix + text for text in TEXTS])
    output = decoding.generate(config, params, tokens, max_length)
    return [vocabulary.decode(ids.tolist()) for ids in np.asarray(output)]


def test_tokenisation_matches_seqio(small_vocabulary, vocabulary):
    texts = [LABEL_PREFIX + TEXTS[0], RATIONALE_PREFIX + TEXTS[5], " ".join(TEXTS)]
    ours = infer.Tokenizer(small_vocabulary).encode(texts, MAX_INPUT)
    np.testing.assert_array_equal(ours, seqio_tokens(vocabulary, texts))
    assert ours[2, -1] == decoding.EOS_ID  # the long text is cut to leave room for EOS


def test_predictions_match_direct_decoding(student, small_vocabulary, vocabulary, tmp_path, capsys):
    inputs = write_inputs(tmp_path / "in.jsonl", good_lines())
    both, label = tmp_path / "both.jsonl", tmp_path / "label.jsonl"
    assert infer.main(argv(student, small_vocabulary, inputs, both, "--output", "both")) == 0
    assert infer.main(argv(student, small_vocabulary, inputs, label)) == 0

    rows = read_rows(both)
    ids = [f"ex{i}" if i not in (2, 6) else i + 1 for i in range(len(TEXTS))]
    assert [row["id"] for row in rows] == ids
    assert [row["input"] for row in rows] == TEXTS
    labels = direct_predictions(student, vocabulary, LABEL_PREFIX, LABEL_LENGTH)
    rationales = direct_predictions(student, vocabulary, RATIONALE_PREFIX, RATIONALE_LENGTH)
    assert [row["label"] for row in rows] == labels
    assert [row["rationale"] for row in rows] == rationales
    assert read_rows(label) == [
        {"id": row["id"], "input": row["input"], "label": row["label"]} for row in rows
    ]
    assert "10/10 examples (100%)" in capsys.readouterr().err


@pytest.mark.parametrize("kept_lines", [0, 4, 8])
def test_resume_after_a_killed_run_equals_an_uninterrupted_one(
    student, small_vocabulary, tmp_path, capsys, kept_lines
):
    inputs = write_inputs(tmp_path / "in.jsonl", good_lines())
    whole, resumed = tmp_path / "whole.jsonl", tmp_path / "resumed.jsonl"
    assert infer.main(argv(student, small_vocabulary, inputs, whole, "--output", "both")) == 0
    lines = whole.read_bytes().splitlines(keepends=True)
    resumed.write_bytes(b"".join(lines[:kept_lines]) + lines[kept_lines][:20])
    settings = (tmp_path / "whole.jsonl.settings.json").read_text()
    (tmp_path / "resumed.jsonl.settings.json").write_text(settings)  # a killed run left both
    capsys.readouterr()

    assert infer.main(argv(student, small_vocabulary, inputs, resumed, "--output", "both")) == 0
    assert resumed.read_bytes() == whole.read_bytes()
    assert "dropped the partial last line" in capsys.readouterr().err

    assert infer.main(argv(student, small_vocabulary, inputs, resumed, "--output", "both")) == 0
    assert resumed.read_bytes() == whole.read_bytes()
    assert "nothing to do" in capsys.readouterr().err


def test_rows_made_otherwise_are_never_added_to(student, small_vocabulary, tmp_path, capsys):
    inputs = write_inputs(tmp_path / "in.jsonl", good_lines())
    output = tmp_path / "out.jsonl"
    assert infer.main(argv(student, small_vocabulary, inputs, output)) == 0
    settings = json.loads((tmp_path / "out.jsonl.settings.json").read_text())
    assert settings["output"] == "label" and settings["checkpoint"] == student[0]
    before = output.read_bytes()
    capsys.readouterr()
    for change, difference in [
        (("--output", "both"), "output 'label' there, 'both' now"),
        (("--method", "beam"), "method 'greedy' there, 'beam' now; num_beams None there, 4 now"),
        (("--max_input_length", "16"), f"max_input_length {MAX_INPUT} there, 16 now"),
    ]:
        assert infer.main(argv(student, small_vocabulary, inputs, output, *change)) == 2
        error = capsys.readouterr().err
        assert f"{output} holds 10 rows made otherwise ({difference}): give another" in error
        assert output.read_bytes() == before
    (tmp_path / "out.jsonl.settings.json").unlink()
    assert infer.main(argv(student, small_vocabulary, inputs, output)) == 2
    assert "has 10 rows but no out.jsonl.settings.json" in capsys.readouterr().err


def test_rows_of_other_weights_or_other_inputs_are_never_added_to(
    student, small_vocabulary, tmp_path, capsys
):
    """What the paths and ids alone do not tell: the checkpoint trained again at the same
    path, or an id whose input changed. A new id is added to the same rows."""
    path, config, params = student
    checkpoint = tmp_path / "checkpoint"
    shutil.copytree(path, checkpoint)
    inputs = write_inputs(tmp_path / "in.jsonl", good_lines())
    output = tmp_path / "out.jsonl"
    run = argv((str(checkpoint),), small_vocabulary, inputs, output)
    assert infer.main(run) == 0
    before = output.read_bytes()
    capsys.readouterr()

    changed = good_lines()
    changed[0] = changed[0].replace(TEXTS[0], TEXTS[1])
    write_inputs(tmp_path / "in.jsonl", changed)
    assert infer.main(run) == 2
    assert f"{output} holds rows for 1 ids whose input is another now ('ex0')" in (
        capsys.readouterr().err
    )
    write_inputs(tmp_path / "in.jsonl", [*good_lines(), json.dumps({"id": "new", "input": "x"})])
    assert infer.main(run) == 0
    assert output.read_bytes().startswith(before) and len(output.read_bytes().splitlines()) == 11
    after = output.read_bytes()

    printed = json.loads((tmp_path / "out.jsonl.settings.json").read_text())["checkpoint_content"]
    retrained = jax.tree.map(lambda x: x * 2, params)
    checkpoints.save_orbax(checkpoint, config, retrained)
    assert infer.main(run) == 2
    assert f"(checkpoint_content '{printed}' there, '" in capsys.readouterr().err
    assert output.read_bytes() == after


def test_bad_lines_are_named_and_skipped(student, small_vocabulary, tmp_path, capsys):
    lines = good_lines()
    lines[1] = '{"id": "broken", "input": "no closing'
    lines[3] = json.dumps({"id": "ex3", "text": "wrong field"})
    lines[4] = json.dumps(["not", "an", "object"])
    lines[8] = json.dumps({"id": "ex0", "input": "a duplicate id"})
    inputs = write_inputs(tmp_path / "in.jsonl", lines)
    output = tmp_path / "out.jsonl"

    assert infer.main(argv(student, small_vocabulary, inputs, output)) == 1
    err = capsys.readouterr().err
    assert f"{inputs}:2: not valid JSON" in err
    assert f"{inputs}:4: no field 'input'" in err
    assert f"{inputs}:5: an array (expected a JSON object)" in err
    assert f"{inputs}:9: duplicate id 'ex0'" in err
    assert "skipped 4 bad lines" in err
    assert [row["id"] for row in read_rows(output)] == ["ex0", 3, "ex5", 7, "ex7", "ex9"]


def test_missing_files_exit_2_naming_the_path(student, small_vocabulary, tmp_path, capsys):
    inputs = write_inputs(tmp_path / "in.jsonl", good_lines())
    output = tmp_path / "out.jsonl"
    missing = tmp_path / "nowhere"
    checkpoint_args = argv(student, small_vocabulary, inputs, output)
    checkpoint_args[1] = str(missing)
    assert infer.main(checkpoint_args) == 2
    assert f"--checkpoint {missing}: no such file" in capsys.readouterr().err

    assert infer.main(argv(student, small_vocabulary, missing, output)) == 2
    assert f"--input {missing}: cannot read it" in capsys.readouterr().err

    uneven = argv(student, small_vocabulary, inputs, output, "--batch_size", "6")
    assert infer.main(uneven) == 2
    assert "must be a multiple of the mesh's data axis" in capsys.readouterr().err
    assert not output.exists()


def test_long_inputs_are_counted_then_cut_or_refused(
    student, small_vocabulary, vocabulary, tmp_path, capsys
):
    long_text = " ".join(TEXTS)
    tokens = len(vocabulary.encode(LABEL_PREFIX + long_text)) + 1  # with EOS
    assert tokens > MAX_INPUT
    lines = [json.dumps({"id": "long", "input": long_text}), json.dumps({"id": 7, "input": "Hi."})]
    input_path = write_inputs(tmp_path / "inputs.jsonl", lines)
    refused = tmp_path / "refused.jsonl"
    flags = argv(student, small_vocabulary, input_path, refused, "--long_inputs", "refuse")
    assert infer.main(flags) == 2
    message = f"1 of 2 inputs are longer than --max_input_length {MAX_INPUT} tokens"
    error = capsys.readouterr().err
    assert f"{message} with the prefix and EOS: 'long' ({tokens} tokens)" in error
    assert "raise --max_input_length (nothing was decoded)" in error
    assert not refused.exists() and not (tmp_path / "refused.jsonl.settings.json").exists()
    cut = tmp_path / "cut.jsonl"
    assert infer.main(argv(student, small_vocabulary, input_path, cut)) == 0
    assert "their ends are cut off (--long_inputs refuse stops instead)" in capsys.readouterr().err
    assert [row["id"] for row in read_rows(cut)] == ["long", 7]


def test_import_needs_no_tensorflow():
    code = (
        "import dsbs_jax.programs.infer, sys; assert 'tensorflow' not in sys.modules, 'tensorflow'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_counter_prints_each_period_and_when_forced():
    stream = io.StringIO()
    counter = progress.Counter(200, period=3600.0, stream=stream, initial=100)
    counter.update(150)
    assert stream.getvalue() == ""
    counter.update(150, force=True, skipped_lines=2)
    line = stream.getvalue()
    assert line.startswith("150/200 examples (75%)  ")
    assert "examples/s  ETA " in line and line.endswith("  skipped lines 2\n")
