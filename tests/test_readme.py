"""The README's commands and code, run as written (the install step is CI's own)."""

import pathlib
import re
import shlex
import subprocess
import sys

from dsbs_jax import checkpoints

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_quickstart_command_runs(tmp_path):
    first_command = README.split("```bash\n", 1)[1].splitlines()[0]
    run = first_command.split(" && ")[-1]
    argv = shlex.split(run)
    assert argv[0] == ".venv/bin/dsbs-convert"
    argv[0] = str(pathlib.Path(sys.executable).parent / "dsbs-convert")
    argv[argv.index("--to") - 1] = str(tmp_path / "out")  # keep the README's /tmp path free
    subprocess.run(argv, cwd=ROOT, check=True, capture_output=True)
    config, _ = checkpoints.load(tmp_path / "out")
    assert config.vocab_size == 32128


def test_python_example_runs():
    code = re.search(r"```python\n(.*?)```", README, re.S).group(1)
    code += "\nassert logits.shape == (1, 4, 32128) and ids.shape == (1, 8)\n"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True)
