"""Where a run's scalars go: TensorBoard, and a Weights & Biases run, here offline (no
network, no API key), read back from the run's own transaction log."""

import json
import struct
import sys
from pathlib import Path

import pytest
import runs

from dsbs_jax import writers
from dsbs_jax.gin_utils import ConfigError
from dsbs_jax.writers import read_scalars


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """W&B offline, silent, with its own folders, no API key and no server to reach."""
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    home = tmp_path / "wandb_home"
    settings = {
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "WANDB_CONSOLE": "off",
        "WANDB_DISABLE_GIT": "true",
        "WANDB_DISABLE_CODE": "true",
        "WANDB_BASE_URL": "http://127.0.0.1:9",  # nothing listens: a try fails at once
        "WANDB_CONFIG_DIR": str(home / "config"),
        "WANDB_CACHE_DIR": str(home / "cache"),
        "WANDB_DATA_DIR": str(home / "data"),
        "WANDB_ARTIFACT_DIR": str(home / "artifacts"),
        "HOME": str(home),  # no ~/.netrc key either
    }
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    yield
    import wandb

    wandb.teardown()  # the next test's W&B reads its settings afresh


# The transaction log (`run-{id}.wandb`): a 7-byte header (":W&B", magic, version), then
# LevelDB-log records (checksum, length, type: full, first, middle, last) in 32 KiB
# blocks, each a serialised `wandb_internal_pb2.Record`.
BLOCK, HEADER = 32768, 7


def _records(path: Path):
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", data[:7]
    offset, payload = HEADER, b""
    while True:
        if BLOCK - offset % BLOCK < HEADER:  # a block's tail too short for a header: padding
            offset += BLOCK - offset % BLOCK
        if offset + HEADER > len(data):
            return
        _, length, kind = struct.unpack("<IHB", data[offset : offset + HEADER])
        chunk = data[offset + HEADER : offset + HEADER + length]
        offset += HEADER + length
        payload = chunk if kind in (1, 2) else payload + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(payload)
            yield record


def _items(items) -> dict:
    return {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in items}


def _read_run(path: Path) -> dict:
    """A run's id, name, config, logged history by step and exit code."""
    run = {"history": {}}
    for record in _records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run["id"], run["name"] = record.run.run_id, record.run.display_name
            run["config"] = _items(record.run.config.update)
        elif kind == "history":
            items = _items(record.history.item)
            figures = {k: v for k, v in items.items() if not k.startswith("_")}
            run["history"].setdefault(record.history.step.num, {}).update(figures)
        elif kind == "exit":
            run["exit_code"] = record.exit.exit_code
    return run


def _runs(model_dir: Path) -> list[dict]:
    """Each start's offline run in MODEL_DIR/wandb, oldest first, once W&B's service has
    shut down: `finish()` can return before the service has flushed the run's log (as at
    a process's exit, `teardown` waits for it)."""
    import wandb

    wandb.teardown()
    logs = sorted((model_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    return [_read_run(path) for path in logs]


def test_summaries_write_to_tensorboard_and_wandb(offline, tmp_path):
    model_dir = tmp_path / "run_a"
    wandb = dict(project="dsbs-test", config={"train": {"batch_size": 8}})
    with writers.Summaries(str(model_dir), wandb) as summaries:
        summaries.write("train", 1, {"loss": 2.5, "loss/label": 1.0})
        summaries.write("train", 2, {"loss": 2.0})
        summaries.write("validation", 2, {"accuracy": 50.0})
    (run,) = _runs(model_dir)
    assert run["history"] == {
        1: {"train/loss": 2.5, "train/loss/label": 1.0},
        2: {"train/loss": 2.0, "validation/accuracy": 50.0},
    }
    assert run["id"] == (model_dir / writers.RUN_ID_FILE).read_text().strip()
    assert run["name"] == "run_a" and run["exit_code"] == 0
    assert run["config"]["train"] == {"batch_size": 8}
    assert read_scalars(str(model_dir / "train"), "loss") == {1: 2.5, 2: 2.0}
    assert read_scalars(str(model_dir / "validation"), "accuracy") == {2: 50.0}


def test_a_failed_run_is_marked_so(offline, tmp_path):
    with pytest.raises(RuntimeError), writers.Summaries(str(tmp_path), {"project": "dsbs-test"}):
        raise RuntimeError("diverged")
    (run,) = _runs(tmp_path)
    assert run["exit_code"] == 1


def test_the_run_id_is_kept_when_resuming_and_new_otherwise(tmp_path):
    first = writers.run_id(str(tmp_path), resume=False)
    assert writers.run_id(str(tmp_path), resume=True) == first
    second = writers.run_id(str(tmp_path), resume=False)
    assert second != first and writers.run_id(str(tmp_path), resume=True) == second
    assert writers.run_id(str(tmp_path / "elsewhere"), resume=True) not in (first, second)


def test_without_wandb_installed_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` raises ImportError
    with pytest.raises(ConfigError, match=r"dsbs-jax\[wandb\]"):
        writers.import_wandb()


def test_online_without_an_api_key_is_a_configuration_error(offline, monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_MODE", "online")
    with pytest.raises(ConfigError, match="WANDB_API_KEY"):
        writers.Wandb(str(tmp_path), "dsbs-test")


def test_gin_bindings_nest_by_selector_and_resolve_macros():
    text = (
        "STEPS = 10\nSIZES = {'inputs': 8}\nf.steps = %STEPS\nf.sizes = %SIZES\n"
        "f.optimizer = @adamw()\nscope/g.pairs = [(%STEPS, 'a')]\nmod.h.x = None\n"
    )
    assert writers.gin_bindings(text) == {
        "STEPS": 10,
        "SIZES": {"inputs": 8},
        "f": {"steps": 10, "sizes": {"inputs": 8}, "optimizer": "@adamw()"},
        "scope/g": {"pairs": [[10, "a"]]},
        "mod": {"h": {"x": None}},
    }


@pytest.mark.slow
def test_training_logs_to_wandb_and_a_resumed_run_continues_it(offline, tmp_path, tfds_data_dir):
    model_dir = tmp_path / "model"
    project = "--gin.train.wandb_project='dsbs-test'"
    runs.run(runs.flags(model_dir, tfds_data_dir, 3, project))
    go_on = "--gin.train.resume_changes=['train_steps','optimizer']"
    runs.run(runs.flags(model_dir, tfds_data_dir, 5, project, go_on))  # resumes at step 3
    first, second = _runs(model_dir)
    kept = (model_dir / writers.RUN_ID_FILE).read_text().strip()
    assert first["id"] == second["id"] == kept and first["name"] == "model"
    assert (first["exit_code"], second["exit_code"]) == (0, 0)
    # Every step's train loss, and the validation at each run's last step, as TensorBoard.
    losses = read_scalars(str(model_dir / "train"), "loss")
    accuracy = read_scalars(str(model_dir / "validation"), "accuracy")
    assert sorted(losses) == [1, 2, 3, 4, 5] and sorted(accuracy) == [3, 5]
    for run, steps in ((first, [1, 2, 3]), (second, [4, 5])):
        assert sorted(run["history"]) == steps
        for step in steps:
            assert run["history"][step]["train/loss"] == pytest.approx(losses[step], rel=1e-6)
        last = run["history"][steps[-1]]
        assert last["validation/accuracy"] == pytest.approx(accuracy[steps[-1]])
        assert "validation/loss/label" in last
    # The config is the run's gin bindings: the second run's own.
    assert first["config"]["settings"]["Schedule"]["train_steps"] == 3
    assert second["config"]["settings"]["Schedule"]["train_steps"] == 5
    assert second["config"]["train_script"]["train"]["wandb_project"] == "dsbs-test"
