"""Running the binaries as users do, for the end-to-end tests: the quickstart's config with a
tiny model, in a subprocess with a given number of CPU devices."""

import os
import re
import socket
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# A line from TensorFlow's, XLA's or absl's C++ logging (`I0000 00:00:17.1 123 port.cc:153]`),
# absl's Python logging, or TensorFlow's.
LIBRARY_LINE = re.compile(
    r"^([IWEF]\d{4} [\d:. ]+\S+:\d+\]"
    r"|WARNING: All log messages"
    r"|(WARNING|INFO|ERROR):(absl|tensorflow))"
)
# A tiny model over the quickstart's vocabulary, bound over the quickstart's model.
TINY = dict(
    emb_dim=16, num_heads=2, head_dim=8, mlp_dim=32, num_encoder_layers=1, num_decoder_layers=1
)
TINY_MODEL = [f"--gin.T5Config.{name}={value}" for name, value in TINY.items()]


# For runs compared by their losses and parameters only: the last step's validation still
# runs (a step's checkpoint is ranked by it), the decoding of `final_eval_splits` does not.
NO_FINAL_EVAL = "--gin.train.final_eval_splits=[]"


def flags(model_dir: Path, data_dir: Path, steps: int, *extra: str) -> list[str]:
    """The quickstart with a tiny model, few steps, per-step logs and a short evaluation."""
    return [
        "--gin_file=gin/runs/quickstart.gin",
        f"--gin.MODEL_DIR='{model_dir}'",
        f"--gin.DATA_DIR='{data_dir}'",
        f"--gin.TRAIN_STEPS={steps}",
        "--gin.BATCH_SIZE=8",
        "--gin.EVAL_PERIOD=1000",
        "--gin.train.log_period=1",
        "--gin.Evaluation.examples=16",
        "--gin.train.final_eval_splits=['validation']",
        *TINY_MODEL,
        *extra,
    ]


def command(flags: list[str], binary: str = "train") -> list[str]:
    return [sys.executable, "-m", f"dsbs_jax.{binary}", *flags]


def environment(devices: int = 1, python_path: Sequence[Path] = ()) -> dict:
    """`devices` CPU devices; `python_path` before $PYTHONPATH (where a user's task module is)."""
    paths = [*map(str, python_path), *filter(None, [os.environ.get("PYTHONPATH")])]
    return {
        **os.environ,
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
        **({"PYTHONPATH": os.pathsep.join(paths)} if paths else {}),
    }


def run(
    flags: list[str],
    devices: int = 1,
    binary: str = "train",
    python_path: Sequence[Path] = (),
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """Run the binary and check that it succeeds; `env` is added to its environment."""
    result = subprocess.run(
        command(flags, binary),
        cwd=ROOT,
        env={**environment(devices, python_path), **(env or {})},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_hosts(flags: list[str], hosts: int, devices: int, binary: str = "train") -> None:
    """Run the binary as `hosts` processes of `devices` CPU devices each, joined by
    `jax.distributed` on 127.0.0.1, and check that every one succeeds."""
    address = f"127.0.0.1:{free_port()}"
    processes = [
        subprocess.Popen(
            command(
                [
                    *flags,
                    f"--coordinator_address={address}",
                    f"--num_processes={hosts}",
                    f"--process_id={index}",
                ],
                binary,
            ),
            cwd=ROOT,
            env=environment(devices),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for index in range(hosts)
    ]
    for process in processes:
        _, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, stderr[-3000:]
