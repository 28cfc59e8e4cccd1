"""A run that lives on Cloud Storage: data prepared, trained, checkpointed, resumed,
evaluated, reported and converted entirely on `gs://` paths, and a T5X checkpoint served
from `gs://` into `gs://`, against a local emulator
(`tests/gcs_emulator.py`: every client talks to it over the network; only `storageLayout`,
which the emulator lacks, is answered by the test's proxy)."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import runs
from gcs_emulator import Emulator
from t5x_layout import write_zarr_copy

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


def on_gcs(env: dict[str, str], code: str) -> str:
    """Run Python `code` (with `epath` imported) against the emulator; its stdout."""
    script = f"from etils import epath\n{code}"
    done = subprocess.run(
        [sys.executable, "-c", script], env={**os.environ, **env}, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


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
    on_gcs(gcs, f"epath.Path({last!r}).rmtree()")
    resumed = run("train", *flags)
    assert f"resuming from the checkpoint at step {STEPS - 1}" in resumed.stderr

    evaluated = run("eval", *EVAL, f"--gin.CHECKPOINT_PATH='{model_dir}'",
                    f"--gin.EVAL_OUTPUT_DIR='{ROOT}/eval'")  # fmt: skip
    assert f"results: {ROOT}/eval" in evaluated.stdout
    again = run("eval", *EVAL, f"--gin.CHECKPOINT_PATH='{model_dir}'",
                f"--gin.EVAL_OUTPUT_DIR='{ROOT}/eval'")  # fmt: skip
    # Fingerprinted on gs:// by the objects' CRC32C: the same content, nothing redone.
    assert "already evaluated (kept): " in again.stdout and " examples in " not in again.stderr
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


@pytest.mark.slow
def test_a_t5x_checkpoint_on_cloud_storage_answers_into_cloud_storage(
    gcs, shared_dir, small_vocabulary, tmp_path
):
    """The public T5X checkpoints' layout (TensorStore zarr arrays beside the msgpack), read
    from gs:// through TensorStore's gcs driver; dsbs-infer's rows appended to a file on
    gs:// and resumed there. The rows equal those of the same checkpoint on local disk."""
    local = tmp_path / "t5x"
    local.mkdir()
    write_zarr_copy(shared_dir / "fixtures/t5x/test_t5_tiny.checkpoint_0", local)
    on_gcs(
        gcs,
        f"for folder, _, names in epath.Path({str(local)!r}).walk():\n"
        f"    target = epath.Path({ROOT + '/t5x'!r}) / folder.relative_to({str(local)!r})\n"
        "    target.mkdir(parents=True, exist_ok=True)\n"
        "    for name in names:\n"
        "        (target / name).write_bytes((folder / name).read_bytes())",
    )
    questions = ["Tom has 3 apples. He buys 4 more.", "Ann has 9 pens.", "Is the sky blue?"]
    inputs = tmp_path / "in.jsonl"

    def infer(checkpoint: str, output_file: str, rows: int):
        inputs.write_text("".join(json.dumps({"input": q}) + "\n" for q in questions[:rows]))
        flags = [f"--checkpoint={checkpoint}", f"--vocabulary={small_vocabulary}",
                 f"--input={inputs}", f"--output_file={output_file}", "--output=both",
                 "--batch_size=2", "--label_length=4", "--rationale_length=6"]  # fmt: skip
        return runs.run(flags, binary="infer", env=gcs).stderr

    answers = f"{ROOT}/answers/rows.jsonl"
    assert "wrote 2 predictions" in infer(f"{ROOT}/t5x", answers, 2)
    assert "wrote 1 predictions" in infer(f"{ROOT}/t5x", answers, 3)  # resumed on gs://
    infer(str(local), str(tmp_path / "rows.jsonl"), 3)
    written = on_gcs(gcs, f"print(epath.Path({answers!r}).read_text(), end='')")
    assert written == (tmp_path / "rows.jsonl").read_text()
    assert len(written.splitlines()) == 3
