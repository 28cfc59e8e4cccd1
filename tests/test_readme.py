"""The README's commands and code, run as written (the install step is CI's own)."""

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


@pytest.mark.parametrize("index", range(len(PYTHON_BLOCKS)))
def test_python_blocks_run(index):
    code = PYTHON_BLOCKS[index]
    if "logits =" in code:
        code += "\nassert logits.shape == (1, 4, 32128) and ids.shape == (1, 8)\n"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True)


def test_the_readme_has_commands_to_run():
    assert len(TOOL_COMMANDS) >= 1 and len(PYTHON_BLOCKS) >= 3
