"""A training run's settings (`dsbs_jax.settings`): gin binds them from the macros, each
checks itself naming what to change, `run.json` records them, and `dsbs-fit` reads
`dsbs-train`'s configuration through `gin_utils.bound_arguments` without calling anything
else it binds."""

import jax
import pytest
from tiny import tiny_config

import gin
from dsbs_jax import files, gin_utils, partitioning, settings
from dsbs_jax.gin_utils import ConfigError
from dsbs_jax.settings import Data, Evaluation, Schedule, Teacher


@pytest.fixture(autouse=True)
def _clear_gin():
    gin.clear_config()
    yield
    gin.clear_config()


def test_the_macros_and_bindings_reach_the_settings_train_gets():
    gin_utils.parse(
        ["runs/quickstart.gin"],
        ["BATCH_SIZE=8", "Data.pack=False", "Schedule.keep_best=2", "Teacher.kd_tasks=['label']"],
    )
    got = gin_utils.bound_arguments("train", ["data", "schedule", "evaluation", "teacher"])
    assert got["data"] == Data(
        mode="dsbs",
        label_task="dsbs_synthetic_label_llm",
        rationale_task="dsbs_synthetic_rationale",
        task_feature_lengths={"inputs": 64, "label": 6, "rationale": 80},
        batch_size=8,
        pack=False,
    )
    assert got["schedule"] == Schedule(
        train_steps=1500, checkpoint_period=500, eval_period=500, keep_best=2
    )
    assert got["evaluation"] == Evaluation(batch_size=100)  # the quickstart's
    assert got["teacher"] == Teacher(kd_tasks=["label"])  # no teacher: no distillation
    assert got["teacher"].distillation(None, "float32") is None


def test_bound_arguments_resolve_only_the_names_asked_for():
    calls = []

    @gin.configurable
    def registered() -> list:
        calls.append(1)
        return ["tasks"]

    @gin.configurable
    def program(settings_value=None, registered_tasks=(), level: int = 3):
        del settings_value, registered_tasks, level

    gin.parse_config("program.registered_tasks = @registered()\nprogram.settings_value = 5")
    assert gin_utils.bound_arguments("program", ["settings_value", "level"]) == {
        "settings_value": 5,
        "level": 3,
    }
    assert calls == []  # the reference not asked for was not called
    assert gin_utils.bound_arguments("program", ["registered_tasks"]) == {
        "registered_tasks": ["tasks"]
    }
    with pytest.raises(KeyError):
        gin_utils.bound_arguments("no_such_program", ["x"])


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: Data(mode="dsbs", label_task="t", task_feature_lengths={}), r"\['BATCH_SIZE'\]"),
        (
            lambda: Data(mode="dsbs", label_task="t", task_feature_lengths={}, batch_size=0),
            "BATCH_SIZE must be at least 1: 0",
        ),
        (lambda: Schedule(), r"\['TRAIN_STEPS'\]"),
        (lambda: Schedule(train_steps=5, eval_period=0), "'EVAL_PERIOD': 0"),
        (
            lambda: Teacher(checkpoint_path="/t", topk_dir="/k", kd_weight=1.0),
            "TEACHER_CHECKPOINT_PATH .* and TEACHER_TOPK_DIR .* are both set",
        ),
        (lambda: Teacher(checkpoint_path="/t"), "so the teacher would not count"),
        (lambda: Teacher(kd_weight=0.5), "but there is no teacher"),
        (
            lambda: Teacher(topk_dir="/k", kd_weight=1.0, hidden_weight=1.0),
            "TEACHER_TOPK_DIR is an offline teacher, which has no hidden states",
        ),
    ],
)
def test_each_setting_refuses_what_cannot_run_naming_the_macro(make, message):
    with pytest.raises(ConfigError, match=message):
        make()


def test_the_teacher_builds_the_steps_distillation_and_its_record(tmp_path, monkeypatch):
    (tmp_path / "teacher").mkdir()
    (tmp_path / "teacher" / "weights").write_bytes(b"weights")
    monkeypatch.chdir(tmp_path)
    teacher = Teacher(
        checkpoint_path="teacher",
        kd_weight=0.5,
        kd_temperature=2.0,
        kd_tasks=["rationale"],
        hidden_weight=0.1,
        hidden_layers=[["encoder:-1", "encoder:0"]],
    )
    distillation = teacher.distillation(tiny_config(), "float32")
    assert (distillation.weight, distillation.temperature, distillation.dtype) == (
        0.5,
        2.0,
        "float32",
    )
    assert distillation.tasks == ("rationale",)
    assert distillation.hidden_layers == (("encoder:-1", "encoder:0"),)
    bad = Teacher(checkpoint_path="/t", hidden_weight=1.0, hidden_layers=[["decoder:9", "x"]])
    with pytest.raises(ConfigError, match="hidden layer 'x' must be 'encoder:i' or 'decoder:i'"):
        bad.distillation(tiny_config(), "float32")
    record = teacher.record(["rationale"], "float32")
    assert record == {
        "checkpoint_path": str(tmp_path / "teacher"),  # absolute: the same from any folder
        "checkpoint_content": files.fingerprint(tmp_path / "teacher"),
        "topk_dir": None,
        "kd_weight": 0.5,
        "kd_temperature": 2.0,
        "kd_direction": "forward",
        "kd_tasks": ["rationale"],
        "dtype": "float32",
        "hidden_weight": 0.1,
        "hidden_layers": [["encoder:-1", "encoder:0"]],
        "hidden_kind": "mse",
    }
    assert Teacher().record([], "bfloat16") is None


def test_batches_that_do_not_split_over_the_mesh_are_refused():
    mesh = partitioning.make_mesh(1, 1, devices=jax.devices()[:4])  # a data axis of 4
    data = Data(mode="dsbs", label_task="t", task_feature_lengths={}, batch_size=8)
    settings.check_batch(data, Evaluation(batch_size=8), mesh, 2, 1, packed=False)
    with pytest.raises(ConfigError, match=r"Evaluation.batch_size 6 .* \(4 devices\)"):
        settings.check_batch(data, Evaluation(batch_size=6), mesh, 1, 1, packed=True)
    with pytest.raises(ConfigError, match="num_microbatches \\(4\\)"):
        settings.check_batch(data, Evaluation(), mesh, 4, 1, packed=False)
    settings.check_batch(data, Evaluation(), mesh, 4, 1, packed=True)  # rows, not examples
    with pytest.raises(ConfigError, match="Data.shards \\(3\\)"):
        settings.check_batch(data, Evaluation(), mesh, 1, 3, packed=True)
    with pytest.raises(ConfigError, match="train.num_microbatches must be at least 1"):
        settings.check_batch(data, Evaluation(), mesh, 0, 1, packed=True)
