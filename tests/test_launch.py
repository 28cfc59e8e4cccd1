"""The launchers in launch/: what each runs (--dry-run, parsed back into argv), that the
argv survives every layer of quoting (run through stand-ins for srun and the TPU
workers' shell), usage errors, a real local run, and shellcheck."""

import json
import os
import pathlib
import shlex
import subprocess
import sys
import tomllib

import pytest

from dsbs_jax import meshes
from dsbs_jax.cli import PREEMPTED_EXIT

REPO = pathlib.Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"
LAUNCHERS = ("local.sh", "gpu.sh", "slurm.sbatch", "tpu_vm.sh")
VENV_BIN = pathlib.Path(sys.executable).parent

# A realistic dsbs-train command line: gin strings keep their quotes, a path has a space.
TRAIN_ARGS = [
    "--gin_file=models/t5_1_1_base.gin",
    "--gin_file=runs/train.gin",
    "--gin.MODEL_DIR='gs://b/run 1'",
    '--gin.LABEL_TASK="dsbs_cqa_label_llm"',
    "--gin.TASK_FEATURE_LENGTHS={'inputs': 1024, 'label': 16, 'rationale': 256}",
    "--gin.train.optimizer=@optimizers.adafactor()",
    "--gin.TRAIN_STEPS=10000",
]
# Arguments no shell layer may touch.
NASTY_ARGS = ["it's $HOME `id` * ; |", ""]
BFLOAT16 = "--gin.T5Config.dtype='bfloat16'"
GPU_ENV = [
    "XLA_PYTHON_CLIENT_MEM_FRACTION=0.9",
    "XLA_FLAGS=--xla_gpu_enable_latency_hiding_scheduler=true",
]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without what the launchers read, the venv's bin first on PATH."""
    read = ("SLURM_", "XLA_", "JAX_", "CUDA_", "PYTHONUNBUFFERED")
    env = {k: v for k, v in os.environ.items() if not k.startswith(read)}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    return {**env, **extra}


def launch(launcher: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(LAUNCH / launcher), *args],
        capture_output=True,
        text=True,
        env=env or clean_env(),
        timeout=120,
    )


def dry_run(launcher: str, *args: str, env: dict | None = None) -> tuple[list[list[str]], str]:
    """The printed commands as argv lists, and the `# ` notes between them."""
    result = launch(launcher, "--dry-run", *args, env=env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    notes = "\n".join(line for line in lines if line.startswith("#"))
    return [shlex.split(line) for line in lines if not line.startswith("#")], notes


def venv_binary(name: str) -> str:
    local = REPO / ".venv" / "bin" / name
    return str(local) if os.access(local, os.X_OK) else str(VENV_BIN / name)


def fake_tool(directory: pathlib.Path, name: str, script: str) -> pathlib.Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(script)
    path.chmod(0o755)
    return path


def fake_binary(directory: pathlib.Path, name: str = "dsbs-train") -> pathlib.Path:
    """Prints its argv and the launcher-set environment as JSON."""
    return fake_tool(
        directory,
        name,
        f"#!{sys.executable}\nimport json, os, sys\n"
        "keys = ('XLA_FLAGS', 'XLA_PYTHON_CLIENT_MEM_FRACTION', 'JAX_PLATFORMS',"
        " 'CUDA_VISIBLE_DEVICES', 'PYTHONUNBUFFERED', 'DSBS_GIN_DIR', 'DSBS_DISTRIBUTED')\n"
        "print(json.dumps({'argv': sys.argv[1:], 'env': {k: os.environ[k] for k in keys"
        " if k in os.environ}}))\n",
    )


# -------------------------------------------------------------------------------------------
# local.sh
# -------------------------------------------------------------------------------------------


def test_local_dry_run_prints_env_then_the_resolved_binary_and_untouched_args():
    commands, notes = dry_run("local.sh", "dsbs-train", *TRAIN_ARGS, *NASTY_ARGS)
    assert commands == [[venv_binary("dsbs-train"), *TRAIN_ARGS, *NASTY_ARGS]]
    assert notes == ""

    commands, _ = dry_run("local.sh", "--cpu_devices", "8", "dsbs-train", *TRAIN_ARGS)
    assert commands == [
        [
            "JAX_PLATFORMS=cpu",
            "XLA_FLAGS=--xla_force_host_platform_device_count=8",
            venv_binary("dsbs-train"),
            *TRAIN_ARGS,
        ]
    ]


def test_local_dry_run_with_a_log_shows_the_tee(tmp_path):
    log = str(tmp_path / "run 1.log")
    commands, _ = dry_run("local.sh", f"--log={log}", "dsbs-eval", "--gin.SPLIT='test'")
    assert commands == [
        [
            "PYTHONUNBUFFERED=1",
            venv_binary("dsbs-eval"),
            "--gin.SPLIT='test'",
            "2>&1",
            "|",
            "tee",
            "-ai",
            log,
        ]
    ]


def test_local_runs_the_binary_and_returns_its_exit_status(tmp_path):
    result = launch("local.sh", "dsbs-prepare", "--help")
    assert result.returncode == 0
    assert result.stdout.startswith("usage: dsbs-prepare")

    log = tmp_path / "logs" / "prepare.log"  # the folder is made
    result = launch("local.sh", "--log", str(log), "dsbs-prepare", "--no_such_flag")
    assert result.returncode == 2
    assert "dsbs-prepare: error:" in result.stdout  # stderr joins stdout
    assert "dsbs-prepare: error:" in log.read_text()


def test_local_passes_args_and_env_to_the_binary(tmp_path):
    binary = fake_binary(tmp_path)
    result = launch("local.sh", "--cpu_devices=4", str(binary), *TRAIN_ARGS, *NASTY_ARGS)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "argv": [*TRAIN_ARGS, *NASTY_ARGS],
        "env": {"JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=4"},
    }


# -------------------------------------------------------------------------------------------
# gpu.sh
# -------------------------------------------------------------------------------------------


def fake_nvidia_smi(directory: pathlib.Path, gpus: int | None) -> dict[str, str]:
    """An environment whose nvidia-smi lists `gpus` GPUs (None: it fails, no driver)."""
    lines = "".join(
        f"echo 'GPU {i}: NVIDIA H100 80GB HBM3 (UUID: GPU-{i})'\n" for i in range(gpus or 0)
    )
    fake_tool(directory, "nvidia-smi", f"#!/bin/sh\n{lines}exit {1 if gpus is None else 0}\n")
    env = clean_env()
    env["PATH"] = f"{directory}{os.pathsep}{env['PATH']}"
    return env


def test_gpu_dry_run_sets_the_xla_env_and_bfloat16(tmp_path):
    env = fake_nvidia_smi(tmp_path, 8)
    commands, notes = dry_run("gpu.sh", "dsbs-train", *TRAIN_ARGS, env=env)
    assert commands == [[*GPU_ENV, venv_binary("dsbs-train"), *TRAIN_ARGS, BFLOAT16]]
    assert notes == "# 8 GPUs on this host (nvidia-smi -L)"

    commands, _ = dry_run(
        "gpu.sh", "--gpus", "0,1", "--float32", "dsbs-train", *TRAIN_ARGS, env=env
    )
    assert commands == [
        ["CUDA_VISIBLE_DEVICES=0,1", *GPU_ENV, venv_binary("dsbs-train"), *TRAIN_ARGS]
    ]


def test_gpu_keeps_the_users_dtype_and_xla_flags_and_leaves_other_binaries_alone(tmp_path):
    env = fake_nvidia_smi(tmp_path, 2)
    env["XLA_FLAGS"] = "--xla_dump_to=/tmp/dump"
    own_dtype = "--gin.T5Config.dtype='float32'"
    commands, _ = dry_run("gpu.sh", "dsbs-train", own_dtype, env=env)
    assert commands == [
        [
            GPU_ENV[0],
            GPU_ENV[1] + " --xla_dump_to=/tmp/dump",
            venv_binary("dsbs-train"),
            own_dtype,
        ]
    ]
    # The evaluation and inference take the model's config from the checkpoint.
    for binary, arg in (("dsbs-eval", "--gin.SPLIT='test'"), ("dsbs-infer", "--checkpoint=/c")):
        commands, _ = dry_run("gpu.sh", binary, arg, env=env)
        assert commands[0][-2:] == [venv_binary(binary), arg]


def test_gpu_without_nvidia_smi_dry_run_says_unknown_and_a_real_run_stops(tmp_path):
    env = fake_nvidia_smi(tmp_path, None)
    commands, notes = dry_run("gpu.sh", "dsbs-train", *TRAIN_ARGS, env=env)
    assert commands == [[*GPU_ENV, venv_binary("dsbs-train"), *TRAIN_ARGS, BFLOAT16]]
    assert "unknown" in notes

    result = launch("gpu.sh", "dsbs-train", *TRAIN_ARGS, env=env)
    assert result.returncode == 1
    assert "no NVIDIA GPU" in result.stderr


def test_gpu_runs_the_binary_with_the_env(tmp_path):
    env = fake_nvidia_smi(tmp_path, 4)
    binary = fake_binary(tmp_path / "bin")
    result = launch("gpu.sh", "--gpus=2,3", str(binary), *TRAIN_ARGS, *NASTY_ARGS, env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "argv": [*TRAIN_ARGS, *NASTY_ARGS, BFLOAT16],
        "env": {
            "CUDA_VISIBLE_DEVICES": "2,3",
            "XLA_PYTHON_CLIENT_MEM_FRACTION": "0.9",
            "XLA_FLAGS": "--xla_gpu_enable_latency_hiding_scheduler=true",
        },
    }
    assert "4 GPUs on this host" in result.stderr


# -------------------------------------------------------------------------------------------
# slurm.sbatch
# -------------------------------------------------------------------------------------------

PER_TASK = 'exec "$0" "$@" --process_id="$SLURM_PROCID"'
SRUN = ["srun", "--ntasks-per-node=1", "--kill-on-bad-exit=1", "env", *GPU_ENV]


def slurm_env(directory: pathlib.Path, nodes: int = 2) -> dict[str, str]:
    """A SLURM job of `nodes` nodes, one task each; scontrol lists node-a1, node-a2, ..."""
    hosts = "".join(f"echo node-a{i + 1}\n" for i in range(nodes))
    fake_tool(
        directory,
        "scontrol",
        f'#!/bin/sh\n[ "$*" = "show hostnames node-a[1-{nodes}]" ] || exit 1\n{hosts}',
    )
    env = clean_env(
        SLURM_JOB_NODELIST=f"node-a[1-{nodes}]", SLURM_NTASKS=str(nodes), SLURM_NNODES=str(nodes)
    )
    env["PATH"] = f"{directory}{os.pathsep}{env['PATH']}"
    return env


def test_slurm_dry_run_outside_a_job_shows_the_variables():
    commands, _ = dry_run("slurm.sbatch", "dsbs-train", *TRAIN_ARGS)
    first_host = '$(scontrol show hostnames "$SLURM_JOB_NODELIST" | sed -n 1p)'
    assert commands == [
        [
            *SRUN,
            "bash",
            "-c",
            PER_TASK,
            venv_binary("dsbs-train"),
            *TRAIN_ARGS,
            BFLOAT16,
            f"--coordinator_address={first_host}:1234",
            "--num_processes=$SLURM_NTASKS",
        ]
    ]


def test_slurm_dry_run_in_a_job_fills_in_the_coordinator(tmp_path):
    env = slurm_env(tmp_path, nodes=4)
    commands, _ = dry_run(
        "slurm.sbatch", "--port", "5555", "--float32", "dsbs-eval", "--gin.SPLIT='test'", env=env
    )
    assert commands == [
        [
            *SRUN,
            "bash",
            "-c",
            PER_TASK,
            venv_binary("dsbs-eval"),
            "--gin.SPLIT='test'",
            "--coordinator_address=node-a1:5555",
            "--num_processes=4",
        ]
    ]
    # A binary that does not join hosts gets no coordinates.
    commands, _ = dry_run("slurm.sbatch", "dsbs-report", "/runs", "--output_dir=/r", env=env)
    assert commands == [[*SRUN, venv_binary("dsbs-report"), "/runs", "--output_dir=/r"]]


def test_slurm_each_task_gets_its_own_process_id_and_the_args_untouched(tmp_path):
    """srun's stand-in runs the task command as task 1 would: the argv survives bash -c."""
    env = slurm_env(tmp_path)
    fake_tool(
        tmp_path,
        "srun",
        '#!/bin/bash\nwhile [[ $1 == --* ]]; do shift; done\nSLURM_PROCID=1 exec "$@"\n',
    )
    binary = fake_binary(tmp_path / "bin")
    result = launch("slurm.sbatch", str(binary), *TRAIN_ARGS, *NASTY_ARGS, env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "argv": [
            *TRAIN_ARGS,
            *NASTY_ARGS,
            BFLOAT16,
            "--coordinator_address=node-a1:1234",
            "--num_processes=2",
            "--process_id=1",
        ],
        "env": dict(kv.split("=", 1) for kv in GPU_ENV),
    }


def test_slurm_refuses_several_tasks_per_node_and_running_outside_a_job(tmp_path):
    env = slurm_env(tmp_path)
    env["SLURM_NTASKS"] = "16"
    result = launch("slurm.sbatch", "--dry-run", "dsbs-train", env=env)
    assert result.returncode == 2
    assert "one task per node" in result.stderr

    result = launch("slurm.sbatch", "dsbs-train", *TRAIN_ARGS)
    assert result.returncode == 2
    assert "not inside a SLURM job" in result.stderr


@pytest.mark.parametrize("status", [0, 1, PREEMPTED_EXIT])
def test_slurm_requeues_a_job_whose_run_was_stopped_before_it_finished(tmp_path, status):
    """Exit 75 (dsbs-train saved and stopped on SIGTERM) puts the job back in the queue,
    where the same command resumes the run; any other exit ends the job with that status."""
    env = {**slurm_env(tmp_path), "SLURM_JOB_ID": "4242"}
    requeued = tmp_path / "requeued"
    fake_tool(
        tmp_path,
        "scontrol",
        '#!/bin/sh\nif [ "$1" = requeue ]; then echo "$2" >> ' + str(requeued) + "; exit 0; fi\n"
        "echo node-a1; echo node-a2\n",
    )
    fake_tool(tmp_path, "srun", f"#!/bin/sh\nexit {status}\n")
    result = launch("slurm.sbatch", "dsbs-train", *TRAIN_ARGS, env=env)
    assert result.returncode == status, result.stderr
    if status == PREEMPTED_EXIT:
        assert requeued.read_text() == "4242\n"
        assert "requeueing job 4242" in result.stderr
    else:
        assert not requeued.exists()


def test_slurm_header_has_overridable_defaults():
    text = (LAUNCH / "slurm.sbatch").read_text()
    directives = [line.split()[1] for line in text.splitlines() if line.startswith("#SBATCH")]
    assert [d.split("=")[0] for d in directives] == [
        "--job-name",
        "--nodes",
        "--ntasks-per-node",
        "--gpus-per-node",
        "--time",
        "--output",
        "--open-mode",
        "--requeue",
        "--signal",
    ]
    assert "--nodes=2" in directives and "--ntasks-per-node=1" in directives
    assert "--signal=TERM@300" in directives  # to the tasks (not B:), before the time limit
    assert "sbatch --nodes=4 launch/slurm.sbatch dsbs-train" in text


# -------------------------------------------------------------------------------------------
# tpu_vm.sh
# -------------------------------------------------------------------------------------------

JAX_VERSION = next(d for d in PYPROJECT["dependencies"] if d.startswith("jax==")).split("==")[1]
WHEEL = f"dsbs_jax-{PYPROJECT['version']}-py3-none-any.whl"
TPU = ["gcloud", "compute", "tpus", "tpu-vm"]


def tpu_dry_run(
    tmp_path, *options: str, binary: str = "dsbs-train", args=TRAIN_ARGS
) -> tuple[list[list[str]], str]:
    """A dry run with a gcloud on PATH that records any call (there must be none)."""
    calls = tmp_path / "gcloud_calls"
    fake_tool(tmp_path / "bin", "gcloud", f'#!/bin/sh\necho "$*" >> {calls}\n')
    env = clean_env()
    env["PATH"] = f"{tmp_path / 'bin'}{os.pathsep}{env['PATH']}"
    result = dry_run("tpu_vm.sh", *options, binary, *args, env=env)
    assert not calls.exists()
    return result


# What a worker's run is told: where the copied gin files are, and to join the others.
REMOTE_ENV = "DSBS_GIN_DIR=$HOME/gin DSBS_DISTRIBUTED=1"
# The mesh dsbs-fit measured for T5 base on a v4-8 (BENCHMARKS.md): data parallel.
BASE_ON_V4_8 = ["--gin.train.fsdp_parallelism=1", "--gin.train.model_parallelism=1"]


def remote_args(train: list[str]) -> list[str]:
    """The arguments of the workers' binary in the last `ssh --command=...`."""
    return shlex.split(train[-1].removeprefix("--command="))[3:]


def test_tpu_dry_run_creates_installs_and_runs_on_all_workers(tmp_path):
    (describe, create, wheel, scp, install, train), notes = tpu_dry_run(
        tmp_path,
        "--name=dsbs-v4",
        "--zone=us-central2-b",
        "--accelerator_type=v4-32",
        "--project=my-project",
        "--spot",
        args=[*TRAIN_ARGS, *NASTY_ARGS],
    )
    where = ["--zone=us-central2-b", "--project=my-project"]
    assert describe == [*TPU, "describe", "dsbs-v4", *where]
    mesh, describe_note = notes.splitlines()
    assert mesh.startswith("# mesh for base on v4-32: data 16 x fsdp 1 x model 1 (dsbs-fit on v4-8")
    assert describe_note == "# only if that describe fails (no such TPU VM):"
    assert create == [
        *TPU,
        "create",
        "dsbs-v4",
        *where,
        "--accelerator-type=v4-32",
        "--version=tpu-ubuntu2204-base",
        "--spot",
    ]
    assert wheel[1:] == ["-m", "pip", "wheel", "--no-deps", "-w", f"{REPO}/build/tpu_vm", str(REPO)]
    assert scp == [
        *TPU,
        "scp",
        "--recurse",
        f"{REPO}/build/tpu_vm/{WHEEL}",
        f"{REPO}/gin",
        "dsbs-v4:",
        *where,
        "--worker=all",
    ]
    assert install[:-1] == [*TPU, "ssh", "dsbs-v4", *where, "--worker=all"]
    assert train[:-1] == install[:-1]
    assert train[-1].startswith(
        "--command=DSBS_GIN_DIR=$HOME/gin DSBS_DISTRIBUTED=1 $HOME/dsbs-venv/bin/dsbs-train "
    )
    assert install[-1].startswith("--command=")
    assert f"'jax[tpu]=={JAX_VERSION}'" in install[-1]


def test_tpu_defaults_and_bfloat16(tmp_path):
    (_, create, *_, train), _ = tpu_dry_run(tmp_path, "--name", "t", "--zone", "z")
    assert create == [
        *TPU,
        "create",
        "t",
        "--zone=z",
        "--accelerator-type=v4-8",
        "--version=tpu-ubuntu2204-base",
    ]
    assert remote_args(train) == [*TRAIN_ARGS, BFLOAT16, *BASE_ON_V4_8]

    *_, report = tpu_dry_run(tmp_path, "--name=t", "--zone=z", binary="dsbs-report", args=[])[0]
    assert (
        report[-1]
        == "--command=DSBS_GIN_DIR=$HOME/gin DSBS_DISTRIBUTED=1 $HOME/dsbs-venv/bin/dsbs-report"
    )


def test_tpu_remote_commands_run_in_the_workers_shell(tmp_path):
    """The two --command strings, run by bash as a worker's ssh would, with stand-ins for
    the worker's virtualenv: the install runs pip, and the run gets exactly the argv and
    the copied gin files as DSBS_GIN_DIR."""
    (*_, install, train), _ = tpu_dry_run(
        tmp_path, "--name=t", "--zone=z", "--float32", args=[*TRAIN_ARGS, *NASTY_ARGS]
    )
    home = tmp_path / "home"
    venv = home / "dsbs-venv" / "bin"
    fake_tool(venv, "pip", '#!/bin/sh\necho "$@" >> "$HOME/pip.log"\n')
    fake_tool(venv, "python", "#!/bin/sh\n")  # the virtualenv exists: no apt
    fake_binary(venv)
    env = clean_env(HOME=str(home))

    command = install[-1].removeprefix("--command=")
    subprocess.run(["bash", "-c", command], env=env, check=True, timeout=60)
    assert (home / "pip.log").read_text().splitlines() == [
        f"install -q jax[tpu]=={JAX_VERSION} {home}/{WHEEL}",
        f"install -q --no-deps --force-reinstall {home}/{WHEEL}",
    ]

    command = train[-1].removeprefix("--command=")
    result = subprocess.run(["bash", "-c", command], env=env, capture_output=True, text=True)
    assert json.loads(result.stdout)["argv"] == [*TRAIN_ARGS, *NASTY_ARGS, *BASE_ON_V4_8]
    env = json.loads(result.stdout)["env"]
    assert (env["DSBS_GIN_DIR"], env["DSBS_DISTRIBUTED"]) == (f"{home}/gin", "1")


PAPER = ["--gin_file=runs/paper/paper.gin", "--gin_file=runs/paper/dataset/cqa.gin"]
# XL: the paper's large settings with XL's shapes, as BENCHMARKS.md measured it.
XL = [*PAPER, "--gin_file=runs/paper/size/large.gin", "--gin_file=models/t5_1_1_xl.gin"]
XXL = [*PAPER, "--gin_file", "gin/runs/paper/size/xxl.gin"]


@pytest.mark.parametrize(
    ("accelerator", "args", "fsdp", "model", "note"),
    [
        ("v4-8", [*PAPER, "--gin_file=runs/paper/size/base.gin"], 1, 1, "base on v4-8: data 4 x "),
        ("v4-8", XL, 4, 1, "xl on v4-8: data 1 x fsdp 4 x model 1 (dsbs-fit: 23.27 GiB of 30.75"),
        ("v4-32", XXL, 4, 4, "xxl on v4-32: data 1 x fsdp 4 x model 4 (dsbs-fit: 12.89 GiB"),
        ("v5litepod-16", ["--gin_file=models/flan_t5_base.gin"], 1, 1, "3.78 GiB of 15.75"),
        ("v4-64", XL, 4, 1, "data 8 x fsdp 4 x model 1 (dsbs-fit on v4-8: 23.27 GiB"),
        ("v5litepod-16", XL, 8, 1, "xl on v5litepod-16: data 2 x fsdp 8 x model 1 (dsbs-fit"),
    ],
)
def test_tpu_dsbs_train_gets_the_mesh_dsbs_fit_measured(accelerator, args, fsdp, model, note):
    """The mesh follows the model size of the gin files (and those they include) and the
    slice; its bindings come after the gin files' own (size/xxl.gin binds model 8)."""
    model_dir = "--gin.MODEL_DIR='gs://b/r'"
    (*_, train), notes = dry_run(
        "tpu_vm.sh", "--name=t", "--zone=z", f"--accelerator_type={accelerator}", "dsbs-train",
        *args, model_dir,
    )  # fmt: skip
    mesh = [f"--gin.train.fsdp_parallelism={fsdp}", f"--gin.train.model_parallelism={model}"]
    assert remote_args(train) == [*args, model_dir, BFLOAT16, *mesh]
    assert notes.startswith("# mesh for ") and note in notes.splitlines()[0]


@pytest.mark.parametrize(
    "binding", ["--gin.train.model_parallelism=2", "--gin.train_script.train.fsdp_parallelism=2"]
)
def test_tpu_a_mesh_on_the_command_line_wins(binding):
    (*_, train), notes = dry_run("tpu_vm.sh", "--name=t", "--zone=z", "dsbs-train", *XL, binding)
    assert remote_args(train) == [*XL, binding, BFLOAT16]
    assert notes.splitlines()[0] == f"# mesh: the command line's ({binding[6:]})"


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (XXL, "no dsbs-fit figure for xxl on v4-8"),
        (["--gin_file=runs/train.gin"], "the gin files include no gin/models/ file"),
        ([*XL, "--gin.TEACHER_CHECKPOINT_PATH='gs://b/flan-t5-xxl'"], "without an online teacher"),
    ],
)
def test_tpu_an_unmeasured_run_keeps_its_mesh_and_is_told_to_run_dsbs_fit(args, reason):
    (*_, train), notes = dry_run("tpu_vm.sh", "--name=t", "--zone=z", "dsbs-train", *args)
    assert remote_args(train) == [*args, BFLOAT16]
    mesh = notes.splitlines()[0]
    assert mesh.startswith("# mesh unknown: ") and reason in mesh
    assert "run dsbs-fit --topology v4-8 first" in mesh


def test_the_measured_meshes_are_benchmarks_figures():
    """dsbs_jax/meshes.py's table is the fitting rows of BENCHMARKS.md's dsbs-fit table."""
    text = (REPO / "BENCHMARKS.md").read_text()
    section = text[text.index("## `dsbs-fit`") :].split("\n## ")[0]
    rows = [line.split("|")[1:-1] for line in section.splitlines() if line.startswith("| 20")]
    found = {}
    for _, size, slice_name, mesh, *_, held, _, verdict, _ in (map(str.strip, r) for r in rows):
        if verdict == "fits":
            _, fsdp, model = map(int, mesh.split(" x "))
            found[slice_name, size.split()[0].lower()] = (fsdp, model, float(held))
    assert found == {
        key: (fit.fsdp, fit.model, fit.held_gib) for key, fit in meshes.MEASURED.items()
    }


@pytest.mark.parametrize("model_dir", ["'/tmp/run'", '"/tmp/run"', "'run'", "None", "'gs:/b'"])
def test_tpu_refuses_a_model_dir_off_cloud_storage(model_dir, tmp_path):
    result = launch(
        "tpu_vm.sh",
        "--dry-run",
        "--name=t",
        "--zone=z",
        "dsbs-train",
        f"--gin.MODEL_DIR={model_dir}",
    )
    assert result.returncode == 2
    assert "--gin.MODEL_DIR must be a gs:// path" in result.stderr
    assert result.stdout == ""


# -------------------------------------------------------------------------------------------
# All launchers
# -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("launcher", "args", "message"),
    [
        ("local.sh", ["--bogus", "dsbs-train"], "unknown option --bogus"),
        ("local.sh", ["--dry-run"], "no binary given"),
        ("local.sh", ["--cpu_devices"], "--cpu_devices needs a value"),
        ("local.sh", ["--cpu_devices=two", "dsbs-train"], "positive integer"),
        ("local.sh", ["no-such-binary-here"], "neither in"),
        ("gpu.sh", ["--gpus", "a,b", "--dry-run", "dsbs-train"], "--gpus takes GPU indices"),
        ("gpu.sh", ["--float32=1", "dsbs-train"], "unknown option --float32=1"),
        ("slurm.sbatch", ["--port", "x", "dsbs-train"], "positive integer"),
        ("slurm.sbatch", ["-n", "2", "dsbs-train"], "unknown option -n"),
        ("tpu_vm.sh", ["--zone=z", "dsbs-train"], "--name is required"),
        ("tpu_vm.sh", ["--name=t", "dsbs-train"], "--zone is required"),
        ("tpu_vm.sh", ["--name=t", "--zone=z", "./dsbs-train"], "command name"),
        ("tpu_vm.sh", ["--name=t", "--zone=z", "--cpu_devices=2", "dsbs-train"], "unknown option"),
    ],
)
def test_usage_errors_exit_2(launcher, args, message):
    result = launch(launcher, *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "--help" in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("launcher", LAUNCHERS)
def test_help_prints_the_usage(launcher):
    result = launch(launcher, "--help")
    assert result.returncode == 0
    assert "Usage:" in result.stdout and "Example:" in result.stdout
    assert "--dry-run" in result.stdout
    assert "#!" not in result.stdout and "set -euo" not in result.stdout  # the header only


def test_launchers_are_executable_and_shellcheck_clean():
    shellcheck = VENV_BIN / "shellcheck"
    assert shellcheck.exists(), "shellcheck comes with the test extras: pip install -e '.[test]'"
    scripts = [LAUNCH / name for name in (*LAUNCHERS, "common.sh")]
    for script in scripts[:-1]:
        assert os.access(script, os.X_OK), f"chmod +x {script}"
    result = subprocess.run(
        [str(shellcheck), "--external-sources", *map(str, scripts)],
        capture_output=True,
        text=True,
        cwd=pathlib.Path("/"),
    )
    assert result.returncode == 0, result.stdout + result.stderr
