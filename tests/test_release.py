"""Reading the paper's release: the README's teacher figures on the real data, the inputs
the reference builds, the validation hold-out, and errors on broken release folders."""

import json
import math
import random
import re
import subprocess
import sys

import pytest

from dsbs_jax.data import datasets, metrics, release
from dsbs_jax.data.release import ReleaseError, split_summary


@pytest.fixture(scope="module")
def datasets_dir(shared_dir):
    return shared_dir / "datasets"


@pytest.fixture(scope="module")
def read(datasets_dir):
    """Every released dataset, read once: {dataset: {split: examples}}."""
    return {
        name: release.read_dataset(datasets_dir, name)
        for name in ("cqa", "svamp", "esnli", "anli1")
    }


def test_cqa_teacher_accuracy_is_the_readmes(read):
    whole_train = read["cqa"]["train"] + read["cqa"]["validation"]
    assert split_summary(whole_train, "cqa")["teacher_correct"] == 7234
    assert split_summary(whole_train, "cqa")["rows"] == 9741
    assert split_summary(read["cqa"]["test"], "cqa")["teacher_correct"] == 943
    assert split_summary(read["cqa"]["test"], "cqa")["rows"] == 1221


def test_svamp_teacher_accuracy_is_the_readmes(read):
    test = split_summary(read["svamp"]["test"], "svamp")
    assert (test["teacher_correct"], test["rows"]) == (148, 200)
    whole_train = read["svamp"]["train"] + read["svamp"]["validation"]
    assert split_summary(whole_train, "svamp")["teacher_correct"] == 586
    assert split_summary(whole_train, "svamp")["rows"] == 800
    # The README's 588 also counts two answers such as "(34 + 40) and (62 - 17)", which the
    # reference's eval() reduces to their last operand (Python's `and`); equal to gold there.
    and_answers = [
        e
        for e in whole_train
        if " and " in e.teacher_label
        and metrics.equations_match(e.label, re.findall(r"\([^()]*\)", e.teacher_label)[-1])
    ]
    assert sorted(e.teacher_label for e in and_answers) == [
        "((29/2) and (30/2))",
        "(34 + 40) and (62 - 17)",
    ]
    assert 586 + len(and_answers) == 588
    assert not any(metrics.equations_match(e.label, e.teacher_label) for e in and_answers)


# (rows, parse failures, teacher correct) per split, as measured.
EXPECTED_SUMMARIES = {
    ("cqa", "train"): (8766, 3, 6514),
    ("cqa", "validation"): (975, 0, 720),
    ("cqa", "test"): (1221, 0, 943),
    ("svamp", "train"): (720, 12, 523),
    ("svamp", "validation"): (80, 1, 63),
    ("svamp", "test"): (200, 2, 148),
    ("esnli", "validation"): (200, 1, 150),
    ("esnli", "test"): (200, 0, 143),
    ("anli1", "validation"): (200, 1, 129),
    ("anli1", "test"): (200, 0, 135),
}


@pytest.mark.parametrize("dataset, split", list(EXPECTED_SUMMARIES))
def test_split_summaries(read, dataset, split):
    result = split_summary(read[dataset][split], dataset)
    rows, failures, correct = EXPECTED_SUMMARIES[dataset, split]
    assert result == {
        "rows": rows,
        "parse_failures": failures,
        "teacher_correct": correct,
        "teacher_accuracy": pytest.approx(correct / rows),
    }


def test_released_splits_present(read):
    assert {name: sorted(splits) for name, splits in read.items()} == {
        "cqa": ["test", "train", "validation"],
        "svamp": ["test", "train", "validation"],
        "esnli": ["test", "validation"],
        "anli1": ["test", "validation"],
    }


def test_cqa_input_is_the_references(read):
    example = read["cqa"]["test"][0]
    assert example.id == "080ef6941410139d6869e78122bc741e"
    assert example.input == (
        "A beaver is know for building prowess, their supplies come from where?\n"
        "Answer Choices:\n(a) british columbia\n(b) body of water\n(c) wooded area\n"
        "(d) pay debts\n(e) zoo"
    )
    assert example.label == "wooded area"


def test_nli_inputs_labels_and_ids(read):
    esnli = read["esnli"]["test"][0]
    assert esnli.input == (
        "This church choir sings to the masses as they sing joyous songs from the book at a "
        "church.</s>The church has cracks in the ceiling."
    )
    assert (esnli.id, esnli.label, esnli.teacher_label) == ("esnli-test-0", "neutral", "neutral")
    anli = read["anli1"]["validation"][0]
    assert (anli.id, anli.label) == ("bf628cf5-6948-4595-a6d0-daf99beb47b9", "contradiction")


def test_ids_are_unique(read):
    ids = [e.id for splits in read.values() for examples in splits.values() for e in examples]
    assert len(ids) == len(set(ids)) == 9741 + 1221 + 800 + 200 + 800


@pytest.mark.parametrize("dataset, n", [("cqa", 9741), ("svamp", 800)])
def test_validation_is_a_stable_tenth_held_out_of_train(read, datasets_dir, dataset, n):
    train, validation = read[dataset]["train"], read[dataset]["validation"]
    assert len(validation) == math.ceil(0.1 * n) and len(train) == n - len(validation)
    train_ids, validation_ids = {e.id for e in train}, {e.id for e in validation}
    assert not train_ids & validation_ids
    all_rows = release.read_rows(datasets_dir / dataset / f"{dataset}_train.json")
    assert len(train_ids | validation_ids) == len(all_rows)
    assert release.read_split(datasets_dir, dataset, "validation") == validation


def test_holdout_order_is_datasets_train_test_split():
    # np.random.default_rng(0).permutation(10) is [4, 6, 2, 7, 3, 5, 9, 0, 8, 1] (NumPy keeps
    # its Generator streams stable); Hugging Face takes the test rows first.
    train, validation = release.holdout_indices(10)
    assert validation.tolist() == [4]
    assert train.tolist() == [6, 2, 7, 3, 5, 9, 0, 8, 1]
    assert len(release.holdout_indices(11)[1]) == 2  # ceil(1.1)


def test_svamp_holdout_is_pinned(read):
    assert [e.id for e in read["svamp"]["validation"][:3]] == [
        "svamp-train-759",
        "svamp-train-697",
        "svamp-train-2",
    ]


def write_release(manual_dir, dataset, split, rows, chunks):
    folder = manual_dir / dataset
    (folder / "llm").mkdir(parents=True, exist_ok=True)
    lines = "".join(json.dumps(row) + "\n" for row in rows)
    (folder / f"{dataset}_{split}.json").write_text(lines)
    for k, outputs in enumerate(chunks):
        (folder / "llm" / f"{split}_CoT_{k}.json").write_text(json.dumps(outputs))


SVAMP_ROW = {
    "input": "Luke scored 84 points in 2 rounds.\nHow many per round?",
    "label": "( 84.0 / 2.0 )",
}


def test_chunks_are_ordered_by_number(tmp_path):
    numbers = list(range(12))
    random.Random(0).shuffle(numbers)
    for k in numbers:
        (tmp_path / f"train_CoT_{k}.json").write_text(json.dumps([f"output {k}"]))
    for stray in ("valid_CoT_0.json", "train_CoT_x.json", "train_CoT_3.json.bak"):
        (tmp_path / stray).write_text("[]")
    files = release.teacher_chunk_files(tmp_path, "train")
    assert [path.name for path in files] == [f"train_CoT_{k}.json" for k in range(12)]
    assert release.read_teacher_outputs(tmp_path, "train") == [f"output {k}" for k in range(12)]
    (tmp_path / "train_CoT_5.json").unlink()
    with pytest.raises(ReleaseError, match="no train_CoT_5.json"):
        release.teacher_chunk_files(tmp_path, "train")


def test_a_malformed_line_is_named(tmp_path):
    write_release(tmp_path, "svamp", "test", [SVAMP_ROW] * 2, [["The answer is (84 / 2)."] * 3])
    path = tmp_path / "svamp" / "svamp_test.json"
    path.write_text(path.read_text() + '{"input": "x", "label": \n')
    with pytest.raises(ReleaseError, match=r"svamp_test\.json, line 3: not JSON"):
        release.read_split(tmp_path, "svamp", "test")
    path.write_text(json.dumps(SVAMP_ROW) + "\n[1, 2]\n")
    with pytest.raises(ReleaseError, match=r"svamp_test\.json, line 2: expected a JSON object"):
        release.read_rows(path)


def test_a_row_without_a_field_is_named(tmp_path):
    write_release(tmp_path, "svamp", "test", [SVAMP_ROW, {"input": "x"}], [["a", "b"]])
    with pytest.raises(ReleaseError, match=r"svamp_test\.json, line 2: no field 'label'"):
        release.read_split(tmp_path, "svamp", "test")


def test_a_bad_nli_label_is_named(tmp_path):
    row = {"premise": "p", "hypothesis": "h", "label": 3}
    write_release(tmp_path, "esnli", "test", [row], [["r\nAnswer: neutral"]])
    with pytest.raises(ReleaseError, match=r"esnli_test\.json, line 1: label 3 is not 0, 1 or 2"):
        release.read_split(tmp_path, "esnli", "test")


def test_teacher_outputs_must_match_the_rows_in_number(tmp_path):
    write_release(tmp_path, "svamp", "test", [SVAMP_ROW] * 3, [["The answer is (84 / 2)."] * 2])
    with pytest.raises(ReleaseError, match="svamp test split: 3 rows .* but 2 teacher outputs"):
        release.read_split(tmp_path, "svamp", "test")


def test_a_chunk_must_be_an_array_of_strings(tmp_path):
    write_release(tmp_path, "svamp", "test", [SVAMP_ROW] * 2, [["The answer is (84 / 2).", None]])
    with pytest.raises(ReleaseError, match=r"test_CoT_0\.json, entry 1: expected a string"):
        release.read_split(tmp_path, "svamp", "test")


def test_only_present_splits_are_read(tmp_path):
    write_release(
        tmp_path, "svamp", "test", [SVAMP_ROW], [["84 / 2 = 42. The answer is (84 / 2)."]]
    )
    assert release.read_split(tmp_path, "svamp", "train") is None
    [example] = release.read_dataset(tmp_path, "svamp")["test"]
    assert example == release.Example(
        id="svamp-test-0",
        input=SVAMP_ROW["input"],
        label="( 84.0 / 2.0 )",
        teacher_output="84 / 2 = 42. The answer is (84 / 2).",
        teacher_rationale="84 / 2 = 42.",
        teacher_label="(84 / 2)",
        teacher_parsed=True,
    )


@pytest.mark.parametrize("dataset", sorted(datasets.DATASETS))
def test_an_empty_manual_dir_has_no_splits(tmp_path, dataset):
    assert [release.read_split(tmp_path, dataset, split) for split in release.SPLITS] == [None] * 3
    with pytest.raises(ReleaseError, match=f"no {dataset} split in {re.escape(str(tmp_path))}"):
        release.read_dataset(tmp_path, dataset)


def test_reading_needs_no_tensorflow():
    heavy = "{'tensorflow', 'tensorflow_datasets', 'seqio'}"
    code = f"import sys, dsbs_jax.data.release; print(sorted({heavy} & set(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
