"""`dsbs-eval` end to end on tiny trained students: metrics that agree with their predictions,
resumable batch jobs over checkpoint directories, several hosts, selection on validation,
rationale scoring, and `dsbs-report` over the runs."""

import json
import shutil

import numpy as np
import pytest
import runs
from PIL import Image
from rouge_score import rouge_scorer
from tiny import tiny_config

from dsbs_jax import checkpoints, decoding, files, inference, partitioning
from dsbs_jax.evaluation import decode_by_length
from dsbs_jax.models import T5
from dsbs_jax.programs import eval, report
from dsbs_jax.writers import read_scalars

LABEL, RATIONALE = "dsbs_synthetic_label_llm", "dsbs_synthetic_rationale"
STEPS = (10, 20, 30)
EXAMPLES = 16  # as the training runs' own final evaluation (runs.flags)


def _rows(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _metrics(out, task, split, step) -> dict:
    return json.loads((out / f"{task}_{split}_{step}.metrics.json").read_text())


def _eval_flags(checkpoint, out, data_dir, *extra) -> list[str]:
    return [
        "--gin_file=gin/runs/eval.gin",
        f"--gin.CHECKPOINT_PATH='{checkpoint}'",
        f"--gin.TASK='{LABEL}'",
        f"--gin.EVAL_OUTPUT_DIR='{out}'",
        f"--gin.DATA_DIR='{data_dir}'",
        "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'label': 6, 'rationale': 80}",
        "--gin.SPLIT='validation'",
        "--gin.BATCH_SIZE=8",
        f"--gin.evaluate.num_examples={EXAMPLES}",
        *extra,
    ]


def _eval(checkpoint, out, data_dir, *extra) -> int:
    import gin

    gin.clear_config()
    return eval.main(_eval_flags(checkpoint, out, data_dir, *extra))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tfds_data_dir) -> dict:
    """Two tiny runs of 30 steps with checkpoints at 10, 20, 30: dsbs and standard."""
    model_dirs = {}
    for mode, seed in (("dsbs", 0), ("standard", 1)):
        model_dir = tmp_path_factory.mktemp(mode)
        runs.run(
            runs.flags(
                model_dir,
                tfds_data_dir,
                STEPS[-1],
                "--gin.CHECKPOINT_PERIOD=10",
                f"--gin.MODE='{mode}'",
                f"--gin.SEED={seed}",
                "--gin.optimizers.adamw.learning_rate=3e-3",
            )
        )
        model_dirs[mode] = model_dir
    return model_dirs


@pytest.fixture(scope="module")
def evaluated(trained, tmp_path_factory, tfds_data_dir):
    out = tmp_path_factory.mktemp("eval")
    code = _eval(trained["dsbs"], out, tfds_data_dir, f"--gin.RATIONALE_TASK='{RATIONALE}'")
    assert code == 0
    return out


@pytest.mark.slow
def test_metrics_agree_with_the_predictions_and_with_training(trained, evaluated):
    for step in STEPS:
        result = _metrics(evaluated, LABEL, "validation", step)
        rows = _rows(evaluated / f"{LABEL}_validation_{step}.jsonl")
        assert len(rows) == EXAMPLES == len({r["id"] for r in rows}) == result["examples"]
        recomputed = 100 * np.mean([r["parsed_prediction"].strip() == r["target"] for r in rows])
        assert result["metrics"]["accuracy"] == pytest.approx(recomputed)
        assert result["metrics"]["accuracy"] == pytest.approx(
            100 * np.mean([r["correct"] for r in rows])
        )
        assert result["checkpoint"].endswith(f"checkpoints/{step}")
        assert result["run"]["method"] == "dsbs-llm" and result["run"]["seed"] == 0
    # The training run's own final evaluation decoded the same examples the same way.
    final = trained["dsbs"] / "eval" / f"{LABEL}_validation_30.jsonl"
    assert _rows(evaluated / f"{LABEL}_validation_30.jsonl") == _rows(final)
    accuracy = read_scalars(evaluated / "validation", f"{LABEL}/accuracy")
    assert sorted(accuracy) == list(STEPS)
    assert accuracy[30] == pytest.approx(
        _metrics(evaluated, LABEL, "validation", 30)["metrics"]["accuracy"]
    )


@pytest.mark.slow
def test_the_students_rationales_are_scored_against_the_teachers(evaluated):
    result = _metrics(evaluated, RATIONALE, "validation", 30)
    rows = _rows(evaluated / f"{RATIONALE}_validation_30.jsonl")
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    rouge = np.mean([scorer.score(r["target"], r["prediction"])["rougeL"].fmeasure for r in rows])
    assert result["metrics"]["rouge_l"] == pytest.approx(100 * rouge)
    stated = [r for r in rows if r["stated_answer"] is not None]
    assert result["metrics"]["states_answer"] == pytest.approx(100 * len(stated) / len(rows))
    assert all(r["input"].startswith("explain: ") for r in rows)


@pytest.mark.slow
def test_a_second_run_keeps_what_is_done(trained, evaluated, tfds_data_dir, capsys):
    before = {p.name: p.stat().st_mtime_ns for p in evaluated.glob("*.json*")}
    assert len(before) == 2 * 2 * len(STEPS)  # label and rationale, predictions and metrics
    assert (
        _eval(trained["dsbs"], evaluated, tfds_data_dir, f"--gin.RATIONALE_TASK='{RATIONALE}'") == 0
    )
    assert {p.name: p.stat().st_mtime_ns for p in evaluated.glob("*.json*")} == before
    assert "already evaluated (kept): 3" in capsys.readouterr().out


@pytest.mark.slow
def test_results_made_otherwise_are_refused_before_any_work_or_redone(
    trained, evaluated, tfds_data_dir, tmp_path, capsys
):
    out = tmp_path / "eval"
    shutil.copytree(evaluated, out)
    before = {p.name: p.read_bytes() for p in out.glob("*.json*")}
    other = trained["standard"] / "checkpoints" / "30"
    assert _eval(other, out, tfds_data_dir) == 2
    error = capsys.readouterr().err
    assert f"{LABEL}_validation_30.metrics.json holds a result made otherwise (checkpoint " in error
    assert f"there, '{other}' now; checkpoint_content '" in error
    assert "now): give another EVAL_OUTPUT_DIR, or bind evaluate.overwrite=True" in error
    beam = ["--gin.evaluate.method='beam'", "--gin.evaluate.num_beams=2"]
    assert _eval(trained["dsbs"], out, tfds_data_dir, *beam) == 2
    assert "(decoding.method 'greedy' there, 'beam' now)" in capsys.readouterr().err
    assert _eval(trained["dsbs"], out, tfds_data_dir, "--gin.evaluate.num_examples=8") == 2
    assert "(num_examples 16 there, 8 now)" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.glob("*.json*")} == before  # nothing touched

    assert _eval(other, out, tfds_data_dir, "--gin.evaluate.overwrite=True") == 0
    redone = _metrics(out, LABEL, "validation", 30)
    assert redone["checkpoint"] == str(other) and redone["run"]["method"] == "standard-llm"
    assert _eval(other, out, tfds_data_dir) == 0  # its own result now: kept
    assert "already evaluated (kept): 1" in capsys.readouterr().out


@pytest.mark.slow
def test_other_weights_or_data_at_the_same_paths_are_told_apart_by_their_content(
    trained, tfds_data_dir, tmp_path, capsys
):
    """A MODEL_DIR trained again, or a DATA_DIR prepared again, keeps its paths: the results
    record fingerprints of the checkpoint's and the data's content, not only their paths."""
    step = tmp_path / "model" / "checkpoints" / "30"
    shutil.copytree(trained["dsbs"] / "checkpoints" / "30", step)
    data_dir = tmp_path / "data"
    shutil.copytree(tfds_data_dir / "dsbs_synthetic", data_dir / "dsbs_synthetic")
    out, few = tmp_path / "eval", "--gin.evaluate.num_examples=8"
    assert _eval(step, out, data_dir, few) == 0
    made = _metrics(out, LABEL, "validation", 30)
    assert made["checkpoint_content"] == files.fingerprint(trained["dsbs"] / "checkpoints" / "30")
    capsys.readouterr()

    shutil.rmtree(step)
    shutil.copytree(trained["standard"] / "checkpoints" / "30", step)  # trained again
    assert _eval(step, out, data_dir, few) == 2
    error = capsys.readouterr().err
    assert f"(checkpoint_content '{made['checkpoint_content']}' there, '" in error
    shutil.rmtree(step)
    shutil.copytree(trained["dsbs"] / "checkpoints" / "30", step)

    assert _eval(step, out, tfds_data_dir, few) == 0  # the same data elsewhere: kept
    assert "already evaluated (kept): 1" in capsys.readouterr().out
    (digest,) = data_dir.glob("dsbs_synthetic/*/metadata.json")
    digest.write_text(json.dumps({"examples_sha256": "0" * 64}))  # as other rows would give
    assert _eval(step, out, data_dir, few) == 2
    assert f"(dataset_content '{made['dataset_content']}' there, '" in capsys.readouterr().err
    assert _metrics(out, LABEL, "validation", 30) == made  # nothing touched


@pytest.mark.slow
def test_an_unreadable_checkpoint_is_named_and_the_others_still_run(
    trained, evaluated, tmp_path, tfds_data_dir, capsys
):
    copied = tmp_path / "checkpoints"
    shutil.copytree(trained["dsbs"] / "checkpoints", copied)
    for file in (copied / "20" / "params").rglob("*"):
        if file.is_file():
            file.write_bytes(b"not a checkpoint")
    out = tmp_path / "out"
    assert _eval(copied, out, tfds_data_dir) == 1
    captured = capsys.readouterr()
    assert f"FAILED {copied / '20'}" in captured.out
    assert sorted(p.name for p in out.glob("*.metrics.json")) == [
        f"{LABEL}_validation_{step}.metrics.json" for step in (10, 30)
    ]
    for step in (10, 30):
        expected = _rows(evaluated / f"{LABEL}_validation_{step}.jsonl")
        assert _rows(out / f"{LABEL}_validation_{step}.jsonl") == expected


@pytest.mark.slow
def test_two_processes_decode_each_example_once_as_one_does(
    trained, evaluated, tmp_path, tfds_data_dir
):
    out = tmp_path / "out"
    flags = _eval_flags(trained["dsbs"] / "checkpoints" / "30", out, tfds_data_dir)
    runs.run_hosts(flags, hosts=2, devices=1, binary="eval")
    rows = _rows(out / f"{LABEL}_validation_30.jsonl")
    assert len({r["id"] for r in rows}) == len(rows) == EXAMPLES
    assert rows == _rows(evaluated / f"{LABEL}_validation_30.jsonl")


@pytest.mark.slow
def test_a_hugging_face_copy_of_a_checkpoint_gives_the_same_predictions(
    trained, evaluated, tmp_path, tfds_data_dir
):
    config, params = checkpoints.load(trained["dsbs"] / "checkpoints" / "30")
    checkpoints.save_hf(tmp_path / "hf", config, params)
    assert _eval(tmp_path / "hf", tmp_path / "out", tfds_data_dir) == 0
    assert _rows(tmp_path / "out" / f"{LABEL}_validation_0.jsonl") == _rows(
        evaluated / f"{LABEL}_validation_30.jsonl"
    )


@pytest.mark.slow
def test_select_on_validation_reports_the_test_split_of_the_best_checkpoint(
    trained, tmp_path, tfds_data_dir
):
    out = tmp_path / "out"
    assert (
        _eval(trained["dsbs"], out, tfds_data_dir, "--gin.SPLIT='test'", "--select_on=validation")
        == 0
    )
    validation = {
        step: _metrics(out, LABEL, "validation", step)["metrics"]["accuracy"] for step in STEPS
    }
    best = max(STEPS, key=lambda step: (validation[step], -step))
    (test,) = out.glob("*_test_*.metrics.json")
    result = json.loads(test.read_text())
    assert result["step"] == best
    assert result["selected_on"] == {
        "split": "validation",
        "metric": "accuracy",
        "value": validation[best],
        "step": best,
    }


@pytest.mark.slow
def test_report_summarises_the_runs_with_a_table_and_plots(trained, tmp_path, capsys):
    out = tmp_path / "report"
    assert (
        report.main(
            [
                str(trained["dsbs"]),
                str(trained["standard"]),
                "--output_dir",
                str(out),
                "--split",
                "validation",
            ]
        )
        == 0
    )
    table = capsys.readouterr().out
    for mode in ("dsbs", "standard"):
        accuracy = _metrics(trained[mode] / "eval", LABEL, "validation", 30)["metrics"]["accuracy"]
        assert f"{mode}-llm" in table
        csv = (out / "report.csv").read_text()
        assert f"{mode}-llm,synthetic,100" in csv and f"{accuracy:g}" in csv.replace(".0,", ",")
    for name in ("accuracy_vs_fraction.png", "learning_curves.png"):
        image = np.asarray(Image.open(out / name).convert("L"))
        assert min(image.shape) > 300
        assert (image < 128).mean() > 0.005, f"{name} is blank"


def test_a_checkpoint_with_another_vocabulary_is_refused(tmp_path, tfds_data_dir, capsys):
    import flax.linen as nn
    import jax

    config = tiny_config()  # 64 ids; the synthetic task's vocabulary has more
    tokens = np.ones((1, 4), np.int32)
    params = nn.meta.unbox(T5(config).init(jax.random.key(0), tokens, tokens)["params"])
    checkpoints.save_orbax(tmp_path / "small_vocab", config, params)
    assert _eval(tmp_path / "small_vocab", tmp_path / "out", tfds_data_dir) == 1
    assert "the model has 64 token ids, fewer than the tasks' vocabulary" in capsys.readouterr().out
    assert not list((tmp_path / "out").glob("*.json*"))


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--gin.CHECKPOINT_PATH='/no/such/checkpoint'"], "/no/such/checkpoint: no such file"),
        (["--gin.TASK='dsbs_nothing_label_llm'"], "'dsbs_nothing_label_llm' is not registered"),
        (["--gin.BATCH_SIZE=6"], "batch_size 6 must be a multiple of the data axis"),
    ],
)
def test_bad_configurations_are_named_before_any_work(
    flags, message, tmp_path, tfds_data_dir, capsys
):
    import gin

    gin.clear_config()
    argv = _eval_flags(tmp_path, tmp_path / "out", tfds_data_dir) + flags
    assert eval.main(argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_consistency_counts_rationales_that_state_the_predicted_label():
    label_rows = [
        {"id": i, "parsed_prediction": label} for i, label in enumerate(["bank", "zoo", "cat"])
    ]
    rationale_rows = [
        {"id": 0, "prediction": "Money is kept there. So the answer is (b) bank."},
        {"id": 1, "prediction": "Animals live there. So the answer is (c) farm."},
        {"id": 2, "prediction": "It purrs."},
    ]
    from dsbs_jax.data import metrics

    figures = eval.consistency(label_rows, rationale_rows, "cqa", metrics.accuracy)
    assert figures == {"states_answer": pytest.approx(200 / 3), "consistency": 50.0}
    assert [r["stated_answer"] for r in rationale_rows] == ["bank", "farm", None]
    assert [r["agrees_with_label"] for r in rationale_rows] == [True, False, None]


def test_decoding_by_length_returns_rows_in_their_order():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 40, size=23)
    inputs = np.zeros((23, 48), np.int32)
    for row, length in enumerate(lengths):
        inputs[row, :length] = rng.integers(2, 100, size=length)
    widths = []

    def decode(batch):
        assert len(batch) == 8
        widths.append(np.count_nonzero(batch, axis=1).max())
        return np.stack([batch.sum(axis=1), np.count_nonzero(batch, axis=1)], axis=1)

    output = decode_by_length(decode, inputs, 8)
    np.testing.assert_array_equal(output[:, 0], inputs.sum(axis=1))
    assert widths == sorted(widths, reverse=True) and len(widths) == 3


def test_trimming_padding_columns_does_not_change_what_is_decoded():
    import flax.linen as nn
    import jax

    config = tiny_config()
    tokens = np.zeros((4, 96), np.int32)
    for row, length in enumerate((5, 17, 9, 30)):
        tokens[row, : length - 1] = np.arange(2, length + 1)
        tokens[row, length - 1] = decoding.EOS_ID
    boxed = T5(config).init(jax.random.key(0), tokens[:, :8], tokens[:, :8])["params"]
    params = nn.meta.unbox(boxed)
    mesh = partitioning.make_mesh()
    placed = partitioning.place(params, inference.params_sharding(config, mesh))
    decoder = inference.BatchDecoder(config, placed, mesh, max_length=7)
    assert inference.trimmed_width(tokens) == 32
    np.testing.assert_array_equal(decoder(tokens), decoding.generate(config, params, tokens, 7))
