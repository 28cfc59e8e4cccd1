"""A run that lives on Cloud Storage: data prepared, trained, checkpointed, resumed,
evaluated, reported and converted entirely on `gs://` paths, against a local emulator
(`tests/gcs_emulator.py`: every client talks to it over the network; only `storageLayout`,
which the emulator lacks, is answered by the test's proxy)."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import runs
from gcs_emulator import Emulator

from dsbs_jax import checkpoints

BUCKET = "dsbs-test"
ROOT = f"gs://{BUCKET}"
STEPS = 3
EVAL = [
    "--gin_file=gin/runs/eval.gin",
    "--gin.TASK='dsbs_synthetic_label_llm'",
    "--gin.TASK_FEATURE_LENGTHS={'inputs': 64, 'label': 6}",
    "--gin.evaluate.num_examples=16",
    f"--gin.DATA_DIR='{ROOT}/tfds'",
]


@pytest.fixture(scope="module")
def gcs() -> dict[str, str]:
    with Emulator(BUCKET) as emulator:
        yield emulator.env


@pytest.mark.slow
def test_a_run_lives_entirely_on_cloud_storage(gcs, tfds_data_dir, tmp_path):
    def run(binary: str, *flags: str):
        return runs.run(list(flags), binary=binary, env=gcs)

    run("prepare", "--dataset", "synthetic", "--data_dir", f"{ROOT}/tfds")
    model_dir = f"{ROOT}/run"
    flags = runs.flags(model_dir, f"{ROOT}/tfds", STEPS, "--gin.CHECKPOINT_PERIOD=1")
    run("train", *flags)
    # As if stopped before its last checkpoint: without it, the run resumes from the one before.
    last = f"{model_dir}/checkpoints/{STEPS}"
    subprocess.run(
        [sys.executable, "-c", f"from etils import epath; epath.Path({last!r}).rmtree()"],
        env={**os.environ, **gcs},
        check=True,
    )
    resumed = run("train", *flags)
    assert f"resuming from the checkpoint at step {STEPS - 1}" in resumed.stderr

    evaluated = run("eval", *EVAL, f"--gin.CHECKPOINT_PATH='{model_dir}'",
                    f"--gin.EVAL_OUTPUT_DIR='{ROOT}/eval'")  # fmt: skip
    assert f"results: {ROOT}/eval" in evaluated.stdout
    reported = run("report", f"{ROOT}/eval", "--output_dir", f"{ROOT}/report")
    assert "| synthetic |" in reported.stdout and f"{ROOT}/report/" in reported.stdout

    # Orbax on gs:// -> Hugging Face on gs:// -> Orbax on local disk.
    run("convert", f"{model_dir}/checkpoints", f"{ROOT}/hf", "--to", "hf")
    run("convert", f"{ROOT}/hf", str(tmp_path / "from_gcs"), "--to", "orbax")

    # The same run on local disk, uninterrupted, ends with the same parameters.
    local = tmp_path / "local"
    runs.run(runs.flags(local, tfds_data_dir, STEPS, "--gin.CHECKPOINT_PERIOD=1"))
    config, params = checkpoints.load(tmp_path / "from_gcs")
    local_config, local_params = checkpoints.load(local / "checkpoints")
    assert config == local_config
    jax.tree.map(np.testing.assert_array_equal, params, local_params)
