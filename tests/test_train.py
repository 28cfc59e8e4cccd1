"""`dsbs-train` end to end on the synthetic task: resumption, preemption, several hosts,
configuration errors and the guard against non-finite losses."""

import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import runs

import gin
from dsbs_jax import checkpoints, run_tasks
from dsbs_jax.data import training_split
from dsbs_jax.programs import train
from dsbs_jax.writers import read_scalars


def _final_params(model_dir: Path):
    return checkpoints.load(model_dir / "checkpoints")[1]


def _assert_same_params(a, b) -> None:
    import jax

    jax.tree.map(lambda x, y: np.testing.assert_array_equal(x, y), a, b)


def _wait_for_checkpoint(process: subprocess.Popen, directory: Path, timeout: float = 300):
    deadline = time.monotonic() + timeout
    while not directory.exists():
        assert process.poll() is None, process.stderr.read()[-3000:]
        assert time.monotonic() < deadline, f"no {directory} after {timeout} s"
        time.sleep(0.02)


STEPS = 60
# The runs compared with `uninterrupted`, by their losses and parameters.
EVERY_10 = ["--gin.CHECKPOINT_PERIOD=10", runs.NO_FINAL_EVAL]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tfds_data_dir) -> Path:
    model_dir = tmp_path_factory.mktemp("uninterrupted")
    runs.run(runs.flags(model_dir, tfds_data_dir, STEPS, *EVERY_10))
    return model_dir


@pytest.mark.slow
def test_a_run_killed_after_a_checkpoint_resumes_exactly(uninterrupted, tmp_path, tfds_data_dir):
    """Also reading each step's metrics a step late (the accelerators' default, run here on
    CPU, where the default reads them at once): neither changes a loss or a parameter."""
    late = "--gin.train.read_metrics_late=True"
    flags = runs.flags(tmp_path, tfds_data_dir, STEPS, *EVERY_10, late)
    process = subprocess.Popen(
        runs.command(flags),
        cwd=runs.ROOT,
        env=runs.environment(),
        stderr=subprocess.PIPE,
        text=True,
    )
    _wait_for_checkpoint(process, tmp_path / "checkpoints" / "10")
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not (tmp_path / "checkpoints" / str(STEPS)).exists(), "killed too late to test"
    runs.run(flags)
    expected = read_scalars(uninterrupted / "train", "loss")
    assert sorted(expected) == list(range(1, STEPS + 1))
    for tag in ("loss", "examples_per_step"):
        assert read_scalars(tmp_path / "train", tag) == read_scalars(uninterrupted / "train", tag)
    _assert_same_params(_final_params(tmp_path), _final_params(uninterrupted))


@pytest.mark.slow
def test_resuming_with_other_settings_is_refused_before_any_step(
    uninterrupted, tmp_path, tfds_data_dir, capsys
):
    model_dir = tmp_path / "run"
    shutil.copytree(uninterrupted, model_dir)
    before = {p: p.read_bytes() for p in model_dir.rglob("*") if p.is_file()}
    cases = {
        ("--gin.TRAIN_STEPS=80", "--gin.TRAIN_FRACTION=0.5"): (
            f"(train_fraction 1.0 there, 0.5 now; train_steps {STEPS} there, 80 now; "
            f"optimizer.total_steps {STEPS} there, 80 now): resume it with its own, bind "
            "train.resume_changes=['train_fraction', 'train_steps', 'optimizer'] to go on with "
            "these, or give a new MODEL_DIR"
        ),
        # A state of other shapes: named here, not in Orbax's restore.
        ("--gin.T5Config.emb_dim=32", "--gin.train.optimizer=@optimizers.adafactor()"): (
            "(model.emb_dim 16 there, 32 now; optimizer.name 'adamw' there, 'adafactor' now; "
            "optimizer.max_grad_norm 1.0 there, None now): "
        ),
    }
    for changed, message in cases.items():
        gin.clear_config()
        flags = runs.flags(model_dir, tfds_data_dir, STEPS, *EVERY_10, *changed)
        assert train.main(flags) == 2
        assert (
            f"configuration error: {model_dir} holds a run at step {STEPS} with other settings "
            + message
        ) in capsys.readouterr().err
        assert {p: p.read_bytes() for p in model_dir.rglob("*") if p.is_file()} == before


@pytest.mark.slow
def test_packed_steps_hold_the_batch_size_on_average_and_record_their_examples(uninterrupted):
    per_step = read_scalars(uninterrupted / "train", "examples_per_step")
    assert sorted(per_step) == list(range(1, STEPS + 1))
    assert np.mean(list(per_step.values())) == pytest.approx(8, rel=0.15)  # BATCH_SIZE
    padded = 64 + 6 + 64 + 80  # the quickstart's feature lengths: what padding costs
    positions = read_scalars(uninterrupted / "train", "positions_per_example")
    assert max(positions.values()) < padded
    position = json.loads(
        (uninterrupted / "checkpoints" / str(STEPS) / "data" / "metadata").read_text()
    )
    assert position["pack"] and sum(position["examples"]) == sum(per_step.values())


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_exits_as_preempted(uninterrupted, tmp_path, tfds_data_dir):
    flags = runs.flags(
        tmp_path, tfds_data_dir, STEPS, "--gin.CHECKPOINT_PERIOD=1000", runs.NO_FINAL_EVAL
    )
    process = subprocess.Popen(
        runs.command(flags),
        cwd=runs.ROOT,
        env=runs.environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    train_dir = tmp_path / "train"
    _wait_for_checkpoint(process, train_dir)  # training has started
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate()
    assert process.returncode == train.PREEMPTED_EXIT == 75, stderr[-3000:]
    assert "(SIGTERM)" in stdout
    saved = checkpoints.detect_format(tmp_path / "checkpoints")
    assert saved == "orbax"
    stopped_at = int(stdout.split("stopped at step ")[1].split()[0])
    assert 0 < stopped_at < STEPS
    assert (tmp_path / "checkpoints" / str(stopped_at)).exists()
    runs.run(flags)
    assert read_scalars(tmp_path / "train", "loss") == read_scalars(uninterrupted / "train", "loss")
    _assert_same_params(_final_params(tmp_path), _final_params(uninterrupted))


MESH_STEPS = 4
# Every mesh run reads the data as two shards, as two hosts do.
MESH_FLAGS = ["--gin.Data.shards=2", "--gin.CHECKPOINT_PERIOD=2", runs.NO_FINAL_EVAL]


@pytest.fixture(scope="module")
def four_devices(tmp_path_factory, tfds_data_dir) -> Path:
    """One process of 4 devices, all on the data axis."""
    model_dir = tmp_path_factory.mktemp("four_devices")
    runs.run(runs.flags(model_dir, tfds_data_dir, MESH_STEPS, *MESH_FLAGS), devices=4)
    return model_dir


def _assert_same_run(model_dir: Path, expected: Path) -> None:
    losses, expected_losses = (read_scalars(d / "train", "loss") for d in (model_dir, expected))
    assert sorted(expected_losses) == list(range(1, MESH_STEPS + 1))
    np.testing.assert_allclose(
        [losses[s] for s in sorted(expected_losses)],
        [expected_losses[s] for s in sorted(expected_losses)],
        rtol=1e-5,
    )
    jax_tree_allclose(_final_params(model_dir), _final_params(expected))


def jax_tree_allclose(a, b) -> None:
    import jax

    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6), a, b)


@pytest.mark.slow
@pytest.mark.parametrize("mesh", [[], ["--gin.train.fsdp_parallelism=4"]], ids=["data", "fsdp"])
def test_two_processes_of_two_devices_match_one_process_of_four(
    mesh, four_devices, tmp_path, tfds_data_dir
):
    """Data parallel over the two processes, or one fsdp axis that spans them."""
    flags = runs.flags(tmp_path, tfds_data_dir, MESH_STEPS, *MESH_FLAGS, *mesh)
    runs.run_hosts(flags, hosts=2, devices=2)
    _assert_same_run(tmp_path, four_devices)


@pytest.mark.slow
def test_a_model_axis_across_two_processes_matches_it_in_one(tmp_path, tfds_data_dir):
    """model 2 over 2 processes of 1 device (the tiny model has 2 heads): both hosts read
    the same rows, as the one process of 2 devices does."""
    mesh = [*MESH_FLAGS, "--gin.train.model_parallelism=2"]
    one = tmp_path / "one"
    runs.run(runs.flags(one, tfds_data_dir, MESH_STEPS, *mesh), devices=2)
    two = tmp_path / "two"
    runs.run_hosts(runs.flags(two, tfds_data_dir, MESH_STEPS, *mesh), hosts=2, devices=1)
    _assert_same_run(two, one)


@pytest.mark.slow
def test_a_run_resumes_on_another_mesh(four_devices, tmp_path, tfds_data_dir):
    """Saved at step 2 on data 2 x fsdp 2, resumed on fsdp 4, both meshes of the same 4
    data-parallel devices (so the same packed rows): Orbax restores the state into the
    new mesh's shardings and the run goes on as the one-mesh run did."""
    schedule = f"--gin.optimizers.adamw.total_steps={MESH_STEPS}"  # the whole run's
    saved_on = ["--gin.train.fsdp_parallelism=2", schedule]
    runs.run(runs.flags(tmp_path, tfds_data_dir, 2, *MESH_FLAGS, *saved_on), devices=4)
    steps = [p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()]
    assert steps == ["2"]
    resumed_on = ["--gin.train.fsdp_parallelism=4", "--gin.train.resume_changes=['train_steps']"]
    runs.run(runs.flags(tmp_path, tfds_data_dir, MESH_STEPS, *MESH_FLAGS, *resumed_on), devices=4)
    _assert_same_run(tmp_path, four_devices)


def _main(tmp_path, tfds_data_dir, *extra) -> int:
    gin.clear_config()
    return train.main(runs.flags(tmp_path, tfds_data_dir, 2, *extra))


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--gin.train.not_an_argument=1"], "not_an_argument"),
        (
            ["--gin.BATCH_SIZE=6", "--gin.Data.pack=False"],
            "BATCH_SIZE 6 must be a multiple of the data axis (4 devices)",
        ),
        (["--gin.BATCH_SIZE=7", "--gin.Data.shards=2"], "divide BATCH_SIZE 7"),
        (
            ["--gin.TASK_FEATURE_LENGTHS={'inputs': 20, 'label': 8, 'rationale': 144}"],
            "raise TASK_FEATURE_LENGTHS['inputs']",
        ),
        (["--gin.LABEL_TASK='no_such_task'"], "label task 'no_such_task' is not registered"),
        (["--gin.MODE='distill'"], "MODE must be one of standard, dsbs, cot"),
    ],
)
def test_configuration_errors_stop_before_training(extra, message, tmp_path, tfds_data_dir, capsys):
    assert _main(tmp_path, tfds_data_dir, *extra) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())


def test_a_non_finite_loss_stops_the_run_keeping_the_last_good_checkpoint(
    tmp_path, tfds_data_dir, capsys
):
    # Warmup from 0 makes step 1 harmless; step 2's enormous rate blows the parameters up.
    explode = [
        "--gin.optimizers.adamw.learning_rate=1e38",
        "--gin.optimizers.adamw.warmup_steps=2",
        "--gin.CHECKPOINT_PERIOD=1",
    ]
    assert _main(tmp_path, tfds_data_dir, *explode) == 1
    assert "step 2: non-finite" in capsys.readouterr().err
    steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert steps == [1]
    params = checkpoints.load(tmp_path / "checkpoints")[1]
    import jax

    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(params))


def test_hosts_read_disjoint_shards_that_make_up_the_global_batch(registered_tasks):
    lengths = {"inputs": 64, "label": 6, "rationale": 80}
    tasks = run_tasks.task_lengths(
        "dsbs", "dsbs_synthetic_label_llm", "dsbs_synthetic_rationale", lengths
    )

    def first_batch(hosts: int, index: int) -> dict:
        batches = training_split.host_batches(
            tasks, 8, 0, 2, consumed=[0, 0], pack=False, group=(hosts, index)
        )
        return next(batches)[0]

    whole = first_batch(1, 0)
    hosts = [first_batch(2, index) for index in range(2)]
    hashes = [set(h["label"]["example_hash"].ravel()) for h in hosts]
    assert len(hashes[0]) == len(hashes[1]) == 4 and not hashes[0] & hashes[1]
    for task in ("label", "rationale"):
        for feature, value in whole[task].items():
            joined = np.concatenate([h[task][feature] for h in hosts])
            np.testing.assert_array_equal(joined, value, err_msg=f"{task}/{feature}")


def test_training_starts_from_a_hugging_face_checkpoint(tmp_path, tfds_data_dir, capsys):
    import jax
    from flax.linen import meta

    from dsbs_jax.models import T5, T5Config

    config = T5Config(vocab_size=256, **runs.TINY)
    tokens = np.ones((1, 1), np.int32)
    params = T5(config).init(jax.random.key(7), tokens, tokens)["params"]
    params = jax.tree.map(np.asarray, meta.unbox(params))
    checkpoints.save_hf(tmp_path / "hf", config, params)
    frozen = ["--gin.optimizers.adamw.learning_rate=0.0", "--gin.CHECKPOINT_PERIOD=1"]
    start = [f"--gin.INITIAL_CHECKPOINT_PATH='{tmp_path / 'hf'}'", *frozen]
    assert _main(tmp_path / "run", tfds_data_dir, *start) == 0
    _assert_same_params(_final_params(tmp_path / "run"), params)

    wider = [f"--gin.INITIAL_CHECKPOINT_PATH='{tmp_path / 'hf'}'", "--gin.T5Config.emb_dim=32"]
    assert _main(tmp_path / "wider", tfds_data_dir, *wider) == 2
    assert "INITIAL_CHECKPOINT_PATH does not fit MODEL_CONFIG" in capsys.readouterr().err


def test_adafactor_loss_options_and_accumulation_are_gin_bindings(tmp_path, tfds_data_dir):
    options = [
        "--gin.train.optimizer=@optimizers.adafactor()",
        "--gin.LossOptions.z_loss=1e-4",
        "--gin.LossOptions.label_smoothing=0.1",
        "--gin.train.num_microbatches=2",
    ]
    assert _main(tmp_path, tfds_data_dir, *options) == 0
    assert read_scalars(tmp_path / "train", "learning_rate") == pytest.approx({1: 1e-3, 2: 1e-3})
    assert all(np.isfinite(v) for v in read_scalars(tmp_path / "train", "loss").values())
    config = (tmp_path / "config.gin").read_text()
    assert "z_loss = 0.0001" in config and "num_microbatches = 2" in config


def test_a_mixture_trains_and_each_of_its_tasks_is_evaluated(
    tmp_path, tfds_data_dir, small_vocabulary
):
    mixture = [
        "--gin.MODE='standard'",
        "--gin.LABEL_TASK='dsbs_label_llm'",
        f"--gin.VOCABULARY='{small_vocabulary}'",
        "--gin.T5Config.vocab_size=2200",
        "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'label': 8}",
        "--gin.train.allow_truncation=True",
        "--gin.Data.pack=True",
    ]
    assert _main(tmp_path, tfds_data_dir, *mixture) == 0
    validation = {
        tag: read_scalars(tmp_path / "validation", tag) for tag in ("loss/label", "accuracy")
    }
    assert np.isfinite(validation["loss/label"][2])
    for dataset in ("cqa", "svamp", "esnli", "anli1"):
        # Each task's accuracy, as logged, is that of its own predictions at the last step.
        task = f"dsbs_{dataset}_label_llm"
        rows = [
            json.loads(line)
            for line in (tmp_path / "eval" / f"{task}_validation_2.jsonl").read_text().splitlines()
        ]
        assert len(rows) == 16 and all(row["input"].startswith("predict: ") for row in rows)
        accuracy = 100 * np.mean([row["correct"] for row in rows])
        logged = read_scalars(tmp_path / "validation", f"{task}/accuracy")
        assert logged[2] == pytest.approx(accuracy), task
