"""`dsbs-train --help` and `dsbs-eval --help` list the gin macros, and a mistyped macro or
configurable is an error that names the closest ones (no training: parsing only)."""

import ast
import re
import subprocess

import pytest
from runs import ROOT, command, environment

import gin
from dsbs_jax import gin_utils

BINARIES = {"train": "gin/runs/train.gin", "eval": "gin/runs/eval.gin"}
UNKNOWN_MACRO = ["--gin_file=gin/runs/quickstart.gin", "--gin.TRAIN_STEP=5"]


@pytest.fixture(scope="module")
def runs() -> dict[str, subprocess.CompletedProcess]:
    """Each binary's --help, and dsbs-train with a mistyped macro, run side by side."""
    argvs = {name: command(["--help"], name) for name in BINARIES}
    argvs["unknown_macro"] = command(UNKNOWN_MACRO)
    processes = {
        name: subprocess.Popen(
            argv, cwd=ROOT, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for name, argv in argvs.items()
    }
    done = {}
    for name, process in processes.items():
        stdout, stderr = process.communicate(timeout=300)
        done[name] = subprocess.CompletedProcess(
            argvs[name], process.returncode, stdout.decode(), stderr.decode()
        )
    return done


@pytest.fixture(autouse=True)
def clear_gin():
    gin.clear_config()
    yield
    gin.clear_config()


def defined_macros(gin_file: str) -> dict[str, str]:
    """NAME -> default of each top-level `NAME = value` line, as the help should show it."""
    text = (ROOT / gin_file).read_text()
    found = re.findall(r"^([A-Za-z_]\w*) *= *(.+?) *$", text, re.M)
    return {name: "required" if v == "%gin.REQUIRED" else v for name, v in found}


@pytest.mark.parametrize("binary", BINARIES)
def test_help_lists_every_macro_with_its_default(runs, binary):
    help_text = runs[binary]
    assert help_text.returncode == 0, help_text.stderr[-3000:]
    lines = help_text.stdout.splitlines()
    expected = defined_macros(BINARIES[binary])
    assert len(expected) >= 10  # the regex still finds them
    for name, default in expected.items():
        assert f"  {name} = {default}" in lines, name
    assert all(len(line) <= 80 for line in lines), [line for line in lines if len(line) > 80]


@pytest.mark.parametrize("binary", BINARIES)
def test_help_explains_bindings_and_points_to_its_docs_page(runs, binary):
    out = runs[binary].stdout
    words = " ".join(out.split())
    assert "--gin.NAME=VALUE binds a macro (below) or any configurable's parameter" in words
    assert "VALUE is in gin syntax: a string keeps gin's quotes" in words
    assert f"macros of {BINARIES[binary].removeprefix('gin/')}" in out
    page, title = re.search(r'(docs/\w+\.md), "([^"]+)"', out).groups()
    assert (ROOT / page).read_text().startswith(f"# {title}\n")


def test_train_help_shows_the_binding_forms_and_comments(runs):
    out = runs["train"].stdout
    for example in ("--gin.TRAIN_STEPS=1000", "--gin.train.log_period=10"):
        assert f"    {example}\n" in out
    assert """    --gin.MODEL_DIR="'/tmp/run'"\n""" in out
    # MODE's comment is its own, not also RATIONALE_TASK's two lines below.
    mode = out.split("  MODE = 'dsbs'\n", 1)[1]
    assert mode.startswith("      standard: label task only")
    assert "  LABEL_TASK = required\n  RATIONALE_TASK = None\n" in mode


def test_an_unknown_macro_exits_2_naming_the_closest(runs):
    run = runs["unknown_macro"]
    assert run.returncode == 2, run.stderr[-3000:]
    assert (
        "dsbs-train: configuration error: unknown macro TRAIN_STEP in --gin.TRAIN_STEP=5; "
        "did you mean TRAIN_STEPS? (dsbs-train --help lists the macros)"
    ) in run.stderr


def test_macros_reads_defaults_and_the_comment_right_above(tmp_path):
    gin_file = tmp_path / "x.gin"
    gin_file.write_text(
        "# header, not a macro's\n\nfrom __gin__ import dynamic_registration\n\n"
        "# A's comment,\n# on two lines.\nA = %gin.REQUIRED\nB = 'b'\n\n"
        "LENGTHS = {\n    'inputs': 8,\n    'label': 2,\n}\n"
        "f.x = 1\nf:\n  y = 2\n"
    )
    assert gin_utils.macros(gin_file) == [
        gin_utils.Macro("A", "required", "A's comment, on two lines."),
        gin_utils.Macro("B", "'b'", ""),
        gin_utils.Macro("LENGTHS", "{ 'inputs': 8, 'label': 2, }", ""),
    ]


def test_unknown_macros_are_errors_with_suggestions():
    with pytest.raises(gin_utils.ConfigError, match=r"unknown macro SPLT .*did you mean SPLIT\?"):
        gin_utils.parse(["runs/eval.gin"], ["SPLT='validation'"], prog="dsbs-eval")
    gin.clear_config()
    with pytest.raises(gin_utils.ConfigError, match="no gin file defines or uses it"):
        gin_utils.parse(["runs/quickstart.gin"], ["QWERTY_XYZ=1"])


@pytest.mark.parametrize(
    "binding, message",
    [
        ("trian.log_period=1", r"No configurable matching 'trian'(.|\n)*did you mean train\?"),
        ("train.log_perod=1", r"parameter named 'log_perod'(.|\n)*did you mean log_period"),
        ("train.optimizer=@optimizers.adafactr()", r"did you mean optimizers.adafactor"),
        # A run's setting bound where it was before it moved into its dataclass.
        ("train.pack=False", r"parameter named 'pack'(.|\n)*did you mean Data.pack\?"),
        ("train.keep_best=2", r"did you mean Schedule.keep_best\?"),
    ],
)
def test_unknown_configurables_and_parameters_name_the_closest(binding, message):
    with pytest.raises(ValueError, match=message):
        gin_utils.parse(["runs/quickstart.gin"], [binding])


@pytest.mark.parametrize(
    "files, bindings",
    [
        (["runs/quickstart.gin"], ["TRAIN_STEPS=5", "train.log_period=1", "T5Config.emb_dim=16"]),
        (["runs/train.gin"], ["MODEL_CONFIG=None"]),  # used by train.gin, defined by a model's
        (["runs/quickstart.gin"], ["MY_SEED=3", "Data.seed=%MY_SEED"]),  # used on the line
        (
            ["runs/paper/paper.gin", "runs/paper/dataset/cqa.gin", "runs/paper/size/base.gin"],
            ["BASE_CHECKPOINT='/t5'", "INPUT_LENGTH=256", "SEED=1"],  # from included files
        ),
        (["runs/eval.gin"], ["SPLIT='validation'", "evaluate.select_on = 'validation'"]),
    ],
)
def test_known_and_used_macros_still_parse(files, bindings):
    gin_utils.parse(files, bindings, prog="dsbs-train")
    name, value = bindings[0].split("=", 1)
    assert gin.query_parameter(f"%{name}") == ast.literal_eval(value)
