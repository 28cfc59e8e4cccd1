"""The README's commands and code, run as written (the install step is CI's own)."""

import os
import pathlib
import re
import shlex
import subprocess
import sys

import pytest

from dsbs_jax import checkpoints

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
PYTHON_BLOCKS = re.findall(r"```python\n(.*?)```", README, re.S)
TOOL_COMMANDS = [
    line
    for block in re.findall(r"```bash\n(.*?)```", README, re.S)
    for line in block.splitlines()
    if line.startswith(".venv/bin/dsbs-")
]


def run_tool(command: str, tmp_path: pathlib.Path) -> None:
    """Run a README command with this venv's console scripts, writing under `tmp_path`."""
    argv = [a.replace("/tmp/", f"{tmp_path}/") for a in shlex.split(command)]
    argv[0] = str(pathlib.Path(sys.executable).parent / argv[0].removeprefix(".venv/bin/"))
    subprocess.run(argv, cwd=ROOT, check=True, capture_output=True)


def test_quickstart_command_runs(tmp_path):
    first_command = README.split("```bash\n", 1)[1].splitlines()[0]
    run_tool(first_command.split(" && ")[-1], tmp_path)
    config, _ = checkpoints.load(tmp_path / "t5_tiny_hf")
    assert config.vocab_size == 32128


@pytest.mark.parametrize("command", TOOL_COMMANDS)
def test_tool_commands_run(command, tmp_path):
    run_tool(command, tmp_path)


# Appended to the README's own-dataset block: write a small release, build it, read a task.
OWN_DATASET_CHECK = """
import json, pathlib, seqio, tensorflow_datasets as tfds
manual = pathlib.Path("{tmp}/manual/mydata")
(manual / "llm").mkdir(parents=True)
for split in ("train", "valid", "test"):
    rows = [dict(id=f"{{split}}{{i}}", text=f"is {{i}} even?", answer="yes" if i % 2 == 0 else "no")
            for i in range(6)]
    (manual / f"mydata_{{split}}.json").write_text("\\n".join(json.dumps(r) for r in rows))
    outputs = [f"{{i}} is {{'even' if i % 2 == 0 else 'odd'}}. So the answer is {{r['answer']}}."
               + "\\n\\nQ: x" for i, r in enumerate(rows)]
    (manual / "llm" / f"{{split}}_CoT_0.json").write_text(json.dumps(outputs))
DsbsMydata(data_dir="{tmp}/dsbs_tfds").download_and_prepare(
    download_config=tfds.download.DownloadConfig(manual_dir="{tmp}/manual"))
task = seqio.get_mixture_or_task("dsbs_mydata_rationale")
example = next(task.source.get_dataset("test", shuffle=False).as_numpy_iterator())
assert example["teacher_rationale"].decode().endswith("."), example
assert example["teacher_parsed"], example
print("built", example["id"].decode())
"""


@pytest.mark.parametrize("index", range(len(PYTHON_BLOCKS)))
def test_python_blocks_run(index, tmp_path):
    code = PYTHON_BLOCKS[index].replace("/tmp/", f"{tmp_path}/")
    if "logits =" in code:
        code += "\nassert logits.shape == (1, 4, 32128) and ids.shape == (1, 8)\n"
    if "class DsbsMydata" in code:
        code += OWN_DATASET_CHECK.format(tmp=tmp_path)
    # A module in a package, where users keep a builder (TFDS reads its code path).
    package = tmp_path / "readme_block"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "block.py").write_text(code)
    run = subprocess.run(
        [sys.executable, "-c", "import readme_block.block"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    if "class DsbsMydata" in code:
        assert "built test" in run.stdout


def test_the_readme_has_commands_to_run():
    assert len(TOOL_COMMANDS) >= 1 and len(PYTHON_BLOCKS) >= 3
