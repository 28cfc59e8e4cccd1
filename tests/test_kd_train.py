"""`dsbs-train` with an online teacher (logit and hidden-state distillation) end to end on
the synthetic task: the KL and hidden terms logged and recorded, resumption and several
hosts exact with the teacher in the step, and the configurations refused before training."""

import json
from pathlib import Path

import numpy as np
import pytest
import runs

from dsbs_jax import checkpoints, files
from dsbs_jax.programs import train
from dsbs_jax.writers import read_scalars

STEPS, RESTART = 12, 6


def _save_teacher(path: Path, vocab_size: int = 256) -> Path:
    """A random tiny teacher, wider than the student, as an Orbax checkpoint."""
    import jax
    from flax.linen import meta

    from dsbs_jax.models import T5, T5Config

    config = T5Config(vocab_size=vocab_size, **{**runs.TINY, "emb_dim": 32, "mlp_dim": 48})
    tokens = np.ones((1, 1), np.int32)
    params = T5(config).init(jax.random.key(3), tokens, tokens)["params"]
    checkpoints.save_orbax(path, config, jax.tree.map(np.asarray, meta.unbox(params)))
    return path


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    return _save_teacher(tmp_path_factory.mktemp("teacher") / "orbax")


def _kd_flags(teacher: Path, *extra: str) -> list[str]:
    # The schedule's length is fixed, so that a run of RESTART steps continues as one of STEPS.
    return [
        f"--gin.TEACHER_CHECKPOINT_PATH='{teacher}'",
        "--gin.KD_WEIGHT=0.5",
        "--gin.KD_TEMPERATURE=2.0",
        # The teacher is wider: the hidden term trains projections, saved with the student.
        "--gin.HIDDEN_WEIGHT=0.1",
        "--gin.Teacher.hidden_layers=[('encoder:-1', 'encoder:-1'), ('decoder:0', 'decoder:-1')]",
        f"--gin.optimizers.adamw.total_steps={STEPS}",
        "--gin.CHECKPOINT_PERIOD=1000",
        runs.NO_FINAL_EVAL,
        *extra,
    ]


@pytest.fixture(scope="module")
def distilled(tmp_path_factory, tfds_data_dir, teacher) -> Path:
    model_dir = tmp_path_factory.mktemp("distilled")
    runs.run(runs.flags(model_dir, tfds_data_dir, STEPS, *_kd_flags(teacher)))
    return model_dir


def _final_params(model_dir: Path):
    return checkpoints.load(model_dir / "checkpoints")[1]


def _assert_same_params(a, b) -> None:
    import jax

    jax.tree.map(lambda x, y: np.testing.assert_array_equal(x, y), a, b)


@pytest.mark.slow
def test_a_run_with_a_teacher_logs_its_terms_and_records_the_teacher(distilled, teacher):
    kd, hidden = (read_scalars(distilled / "train", f"loss/{term}") for term in ("kd", "hidden"))
    for term in (kd, hidden):
        assert sorted(term) == list(range(1, STEPS + 1))
        assert all(np.isfinite(v) and v > 0 for v in term.values())
    label, rationale = (
        read_scalars(distilled / "train", f"loss/{t}") for t in ("label", "rationale")
    )
    total = read_scalars(distilled / "train", "loss")
    for step in total:  # the blend: alpha = 0.5, beta = 0.5, gamma = 0.1
        expected = 0.5 * label[step] + 0.5 * rationale[step] + 0.5 * kd[step]
        expected += 0.1 * hidden[step]
        assert total[step] == pytest.approx(expected, rel=1e-5)
    run = json.loads((distilled / "run.json").read_text())
    assert run["teacher"] == {
        "checkpoint_path": str(teacher),
        "checkpoint_content": files.fingerprint(teacher),
        "topk_dir": None,
        "kd_weight": 0.5,
        "kd_temperature": 2.0,
        "kd_direction": "forward",
        "kd_tasks": ["label", "rationale"],
        "dtype": "bfloat16",
        "hidden_weight": 0.1,
        "hidden_layers": [["encoder:-1", "encoder:-1"], ["decoder:0", "decoder:-1"]],
        "hidden_kind": "mse",
    }


@pytest.mark.slow
def test_a_run_restarted_from_a_checkpoint_with_a_teacher_continues_exactly(
    distilled, teacher, tmp_path, tfds_data_dir
):
    runs.run(runs.flags(tmp_path, tfds_data_dir, RESTART, *_kd_flags(teacher)))
    assert sorted(read_scalars(tmp_path / "train", "loss")) == list(range(1, RESTART + 1))
    go_on = "--gin.train.resume_changes=['train_steps','optimizer']"
    result = runs.run(runs.flags(tmp_path, tfds_data_dir, STEPS, *_kd_flags(teacher), go_on))
    assert f"resuming from the checkpoint at step {RESTART}" in result.stderr
    for tag in ("loss", "loss/kd", "loss/hidden"):
        assert read_scalars(tmp_path / "train", tag) == read_scalars(distilled / "train", tag), tag
    _assert_same_params(_final_params(tmp_path), _final_params(distilled))


@pytest.mark.slow
def test_two_processes_with_a_teacher_match_one_process_of_two_devices(
    teacher, tmp_path, tfds_data_dir
):
    steps = 3
    flags = [*_kd_flags(teacher), "--gin.Data.shards=2"]
    single = tmp_path / "single"
    runs.run(runs.flags(single, tfds_data_dir, steps, *flags), devices=2)
    multi = tmp_path / "multi"
    runs.run_hosts(runs.flags(multi, tfds_data_dir, steps, *flags), hosts=2, devices=1)
    for tag in ("loss", "loss/kd", "loss/hidden"):
        single_values, multi_values = (read_scalars(d / "train", tag) for d in (single, multi))
        assert sorted(single_values) == list(range(1, steps + 1))
        np.testing.assert_allclose(
            [multi_values[s] for s in sorted(single_values)],
            [single_values[s] for s in sorted(single_values)],
            rtol=1e-5,
            err_msg=tag,
        )


def _refused(model_dir: Path, tfds_data_dir, capsys, *extra: str) -> str:
    import gin

    gin.clear_config()
    assert train.main(runs.flags(model_dir, tfds_data_dir, 2, *extra)) == 2
    checkpoint_dir = model_dir / "checkpoints"
    assert not checkpoint_dir.exists() or not any(checkpoint_dir.iterdir())
    return capsys.readouterr().err


def test_a_teacher_with_another_vocabulary_is_refused_before_training(
    tmp_path, tfds_data_dir, capsys
):
    other = _save_teacher(tmp_path / "teacher300", vocab_size=300)
    flags = [f"--gin.TEACHER_CHECKPOINT_PATH='{other}'", "--gin.KD_WEIGHT=0.5"]
    err = _refused(tmp_path / "run", tfds_data_dir, capsys, *flags)
    assert "configuration error" in err
    assert "vocabulary has 300 tokens, the student's 256" in err and str(other) in err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--gin.KD_WEIGHT=0.5"], "KD_WEIGHT is 0.5 and HIDDEN_WEIGHT 0.0 but there is no"),
        (["--gin.HIDDEN_WEIGHT=0.5"], "HIDDEN_WEIGHT 0.5 but there is no teacher"),
        (
            ["--gin.TEACHER_CHECKPOINT_PATH='{teacher}'"],
            "KD_WEIGHT is 0.0 and HIDDEN_WEIGHT 0.0, so the teacher would not count",
        ),
        (
            ["--gin.TEACHER_CHECKPOINT_PATH='{teacher}'", "--gin.HIDDEN_WEIGHT=0.5"]
            + ["--gin.Teacher.hidden_layers=[('decoder:-1', 'decoder:7')]"],
            "hidden layer 'decoder:7': the teacher's decoder has layers 0 to 0 (or -1 to -1)",
        ),
        (
            ["--gin.TEACHER_CHECKPOINT_PATH='{teacher}'", "--gin.KD_WEIGHT=0.5"]
            + ["--gin.Teacher.kd_direction='sideways'"],
            "sideways",
        ),
        (
            ["--gin.TEACHER_CHECKPOINT_PATH='/no/such/teacher'", "--gin.KD_WEIGHT=0.5"],
            "TEACHER_CHECKPOINT_PATH '/no/such/teacher' cannot be read",
        ),
    ],
)
def test_incomplete_distillation_settings_are_refused_before_training(
    extra, message, teacher, tmp_path, tfds_data_dir, capsys
):
    extra = [flag.format(teacher=teacher) for flag in extra]
    assert message in _refused(tmp_path, tfds_data_dir, capsys, *extra)
