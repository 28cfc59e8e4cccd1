"""`dsbs-fit`: will a training run fit the hardware? Known before renting it.

    dsbs-fit --topology v4-32 --gin_file=... [--gin.NAME=VALUE ...] [--hbm_gib G]
             [--devices N] [--float32] [--json FILE]

Takes the gin files and bindings of a `dsbs-train` run and compiles its training step,
`Trainer.train_step` built as `dsbs-train` builds it (model, optimiser, mode and alpha,
loss options, microbatches, mesh, an online teacher), for the hardware `--topology`
names, without it: JAX's ahead-of-time lowering with abstract arguments allocates
nothing, and a TPU slice's compile-only devices come from libtpu (install the `tpu` extra;
any machine will do). It prints the mesh, one device's memory as XLA's compiler plans it
(`dsbs_jax.aot`: arguments, outputs, temporaries, their total, and the compiler's own peak
on a TPU or GPU) and XLA's FLOPs per step, then the verdict on the last line, the peak
(on CPU the total) against the chip's memory:

    per-device memory: A GiB of B GiB: fits        (exit 0)
    per-device memory: A GiB of B GiB: does not fit  (exit 1)

XLA's TPU compiler itself refuses a step over a chip's usable memory (with libtpu
0.0.42.1: 30.75 GiB of a v4's 32, 15.75 of a v5e's 16), naming what it needed: that is
"does not fit" too, with the figure it names (a lower bound: it may count one kind of
buffer only). A usage error (unknown topology, a mesh the devices cannot form, bad gin)
exits 2 with one line; a compilation that fails for another reason (libtpu missing or
refusing) says what failed and exits 3.

Topologies: TPU slices v4-8 ... v4-64, v5e-1 ... v5e-64 (also v5litepod-N), v5p-8 ...
v5p-64, v6e-1 ... v6e-64, compiled by the TPU compiler itself, whose figures are those of
the real slice; `gpu`, this host's GPUs (their own compiler and memory); `cpu`, this
host's CPU devices (`--devices N` of them), an estimate from XLA's CPU compiler, which
lays out and schedules buffers differently from a GPU's or TPU's (see bench/memory.py),
compared with `--hbm_gib` per device (default: this host's memory shared by the devices).
On a TPU or GPU the step computes in bfloat16, as the launchers run dsbs-train on
accelerators (launch/common.sh), unless `--float32` or a `--gin.T5Config.dtype` binding.

The batch is BATCH_SIZE examples per step, each padded to TASK_FEATURE_LENGTHS, as
`Data.pack = False` runs: with packing (the default) dsbs-train sizes its rows from the
data, which are shorter in total, so this is about an upper bound (packed rows are longer
than one example, so their attention can cost a little more). The figures are those of
the training step alone: evaluation and decoding run their own, smaller steps.
"""

import argparse
import dataclasses
import json
import math
import os
import re
import sys
import time
from collections.abc import Mapping, Sequence

import jax

import gin
from dsbs_jax import (
    aot,
    checkpoints,
    cli,
    console,
    gin_utils,
    hardware,
    losses,
    partitioning,
    settings,
)
from dsbs_jax.gin_utils import ConfigError
from dsbs_jax.models import T5Config
from dsbs_jax.settings import Evaluation, Teacher
from dsbs_jax.trainer import LossOptions, Trainer

PROG = "dsbs-fit"
FITS, DOES_NOT_FIT, USAGE, FAILED = 0, 1, 2, 3
GIB = aot.GIB
# XLA's TPU compiler refuses a program over the chip's usable memory, saying what it needs
# and what there is: "... required for HLO temporaries (42.43G) exceeds available HBM
# (30.75G)", or "Used 20.5G of 15.48G hbm".
_SIZE = r"([\d.]+)([KMGT]?)(?:i?B)?"
_OUT_OF_MEMORY = (
    re.compile(rf"\({_SIZE}\) exceeds available HBM \({_SIZE}\)"),
    re.compile(rf"Used {_SIZE} of {_SIZE} hbm"),
)
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


class Unavailable(RuntimeError):
    """The hardware cannot be compiled for here (not the configuration's fault)."""


def parser() -> argparse.ArgumentParser:
    examples = ("train.model_parallelism=4", "BATCH_SIZE=32")
    result = gin_utils.flag_parser(PROG, __doc__, "runs/train.gin", examples)
    result.add_argument(
        "--topology",
        required=True,
        help=f"the hardware: {', '.join(hardware.known_names())} (v5litepod-N is v5e-N)",
    )
    result.add_argument(
        "--hbm_gib",
        type=float,
        help="memory per device to fit in, GiB (default: the chip's; cpu: this host's "
        "memory over the devices; gpu: what JAX may allocate)",
    )
    result.add_argument("--devices", type=int, help="--topology cpu: that many CPU devices")
    result.add_argument(
        "--float32",
        action="store_true",
        help="keep the gin files' T5Config.dtype on a TPU or GPU (default there: bfloat16)",
    )
    result.add_argument("--json", help="also write the figures (bytes) to this file")
    return result


# -------------------------------------------------------------------------------------------
# The hardware
# -------------------------------------------------------------------------------------------


def target(args: argparse.Namespace) -> tuple[str, list, float, str]:
    """(description, devices, GiB per device, platform) of `--topology`."""
    name = args.topology
    tpu = hardware.tpu_slice(name)
    if args.devices is not None and name != "cpu":
        raise ConfigError(f"--devices is for --topology cpu; {name} has its own devices")
    if tpu is not None:
        try:
            devices = hardware.slice_devices(tpu, console.verbose())
        except hardware.TopologyError as error:
            raise Unavailable(str(error)) from None
        return tpu.describe(), devices, args.hbm_gib or tpu.hbm_gib, "tpu"
    if name == "cpu":
        devices = jax.devices("cpu")
        capacity = args.hbm_gib or _host_memory_gib() / len(devices)
        description = (
            f"cpu: {len(devices)} CPU devices of this host, {capacity:.2f} GiB each "
            "(XLA's CPU compiler: an estimate of an accelerator's figures)"
        )
        return description, devices, capacity, "cpu"
    if name == "gpu":
        try:
            devices = jax.devices("gpu")
        except RuntimeError:
            found = jax.default_backend()
            raise ConfigError(
                f"--topology gpu: this host has no GPU that JAX can use (it has {found}); "
                "compile for a TPU slice, or --topology cpu for an estimate"
            ) from None
        limit = (devices[0].memory_stats() or {}).get("bytes_limit")
        if args.hbm_gib is None and not limit:
            raise ConfigError("--topology gpu: JAX gives no memory limit here: give --hbm_gib")
        capacity = args.hbm_gib or limit / GIB
        description = f"gpu: {len(devices)} x {devices[0].device_kind} ({capacity:.2f} GiB usable)"
        return description, devices, capacity, "gpu"
    raise ConfigError(
        f"unknown topology {name!r}; known: {', '.join(hardware.known_names())} "
        "(and v5litepod-N for v5e-N)"
    )


def _host_memory_gib() -> float:
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024 / GIB
    raise ConfigError("cannot read this host's memory: give --hbm_gib")


def _prepare_backends(args: argparse.Namespace) -> None:
    """Before JAX starts its backends: a TPU slice is compiled for from the CPU (no local
    TPU is opened, even on a TPU VM that is training); `--devices` CPU devices."""
    from jax._src import xla_bridge

    if xla_bridge.backends_are_initialized():
        return
    if hardware.tpu_slice(args.topology) is not None:
        jax.config.update("jax_platforms", "cpu")
    if args.topology == "cpu" and args.devices is not None:
        if args.devices < 1:
            raise ConfigError(f"--devices {args.devices}: give at least 1")
        jax.config.update("jax_num_cpu_devices", args.devices)


def accelerator_dtype(args: argparse.Namespace, bindings: Sequence[str]) -> list[str]:
    """The launchers' bfloat16 on TPUs and GPUs, unless --float32 or a dtype binding."""
    if args.topology == "cpu" or args.float32:
        return []
    if any(re.match(r"\s*([\w.]*\.)?T5Config\.dtype\s*=", b) for b in bindings):
        return []
    return ["T5Config.dtype = 'bfloat16'"]


# -------------------------------------------------------------------------------------------
# The run, as dsbs-train configures it
# -------------------------------------------------------------------------------------------


# dsbs-train's entry point, by the gin selector its bindings use (`train.model_parallelism`):
# its configuration is read, the program not imported (no program imports another).
TRAIN = "train"


def train_arguments(names: Sequence[str]) -> dict:
    """dsbs-train's `train()` arguments `names` under the parsed gin: the bound ones
    resolved (only these: nothing else the run needs, such as its data, is touched), the
    others their defaults."""
    try:
        return gin_utils.bound_arguments(TRAIN, names)
    except KeyError:
        raise ConfigError(
            "dsbs-train's train() is not configured: include runs/train.gin"
        ) from None


def teacher_config(path: str) -> T5Config:
    """An online teacher's config: a Hugging Face directory's config.json is read alone;
    other formats are read whole (`checkpoints.load`)."""
    try:
        if checkpoints.detect_format(path) == "hf":
            with open(os.path.join(path, checkpoints.HF_CONFIG)) as config:
                return checkpoints.config_from_hf(json.load(config), path)
        return checkpoints.load(path)[0]
    except (ValueError, FileNotFoundError, OSError) as error:
        raise ConfigError(f"TEACHER_CHECKPOINT_PATH {path!r} cannot be read: {error}") from None


def build(devices: list) -> tuple[Trainer, dict, dict]:
    """The trainer dsbs-train would build on `devices`, the padded batch of its step, and
    a description of both."""
    a = train_arguments(
        [
            "model_config",
            "optimizer",
            "data",
            "evaluation",
            "teacher",
            "loss_options",
            "num_microbatches",
            "model_parallelism",
            "fsdp_parallelism",
            "teacher_dtype",
        ]
    )
    data, teacher = a["data"], a["teacher"] or Teacher()
    if teacher.topk_dir:
        raise ConfigError(
            "TEACHER_TOPK_DIR (an offline teacher): its top-k features are not modelled by "
            "dsbs-fit yet; check the run without it"
        )
    try:
        weights = losses.task_weights(data.mode, data.alpha)
        mesh = partitioning.make_mesh(
            a["model_parallelism"], a["fsdp_parallelism"] or 1, devices=devices
        )
    except ValueError as error:
        raise ConfigError(str(error)) from None
    lengths = data.task_feature_lengths
    tasks = [losses.LABEL] + ([losses.RATIONALE] if data.mode == "dsbs" else [])
    missing = sorted({"inputs", *tasks} - set(lengths))
    if missing:
        raise ConfigError(
            f"TASK_FEATURE_LENGTHS {dict(lengths)} lacks {missing}: give 'inputs' and the "
            f"target length of each task ({', '.join(tasks)})"
        )
    rows = data.batch_size
    microbatches = a["num_microbatches"]
    evaluation = a["evaluation"] or Evaluation()
    settings.check_batch(data, evaluation, mesh, microbatches, data.shards or 1, data.pack)
    if data.pack:  # dsbs-train's packed rows per step are a multiple of this
        multiple = partitioning.batch_shards(mesh) * microbatches
        rows = math.ceil(rows / multiple) * multiple
    batch = aot.padded_batch({task: (rows, lengths["inputs"], lengths[task]) for task in tasks})
    distillation = None
    if teacher.checkpoint_path:
        distillation = teacher.distillation(
            teacher_config(teacher.checkpoint_path), a["teacher_dtype"]
        )
    config = a["model_config"]
    try:
        trainer = Trainer(
            config,
            a["optimizer"],
            mesh,
            weights,
            a["loss_options"] or LossOptions(),
            microbatches,
            distillation,
        )
    except ValueError as error:
        raise ConfigError(str(error)) from None
    parameters = sum(leaf.size for leaf in jax.tree.leaves(trainer.abstract_state.params))
    described = {
        "model": (
            f"T5 of {_count(parameters)} parameters (emb_dim {config.emb_dim}, "
            f"{config.num_encoder_layers}+{config.num_decoder_layers} layers, mlp_dim "
            f"{config.mlp_dim}), activations {config.dtype}, remat {config.remat}"
        ),
        "step": (
            f"mode {data.mode}, optimizer {_optimizer_name()}, microbatches {microbatches}"
            + ("" if distillation is None else f", online teacher {teacher.checkpoint_path}")
        ),
        "batch": (
            f"{rows} examples padded to inputs {lengths['inputs']}, "
            + ", ".join(f"{task} {lengths[task]}" for task in tasks)
            + (" (packing's rows are sized from the data: this is about an upper bound)")
            * data.pack
        ),
        "parameters": parameters,
    }
    return trainer, batch, described


def _count(n: float) -> str:
    """1.2M, 11.3B: a parameter count as people say it."""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return str(int(n))


def _optimizer_name() -> str:
    """The optimiser's gin name as bound to train.optimizer (e.g. `adamw`)."""
    bound = gin.get_bindings(TRAIN, resolve_references=False).get("optimizer")
    name = getattr(bound, "selector", None) or getattr(
        getattr(bound, "configurable", None), "name", None
    )
    return str(name).split(".")[-1] if name else "(from gin)"


def mesh_line(mesh: jax.sharding.Mesh) -> str:
    axes = " x ".join(f"{axis} {size}" for axis, size in mesh.shape.items())
    return f"{axes} ({mesh.devices.size} devices)"


# -------------------------------------------------------------------------------------------
# Compiling and judging
# -------------------------------------------------------------------------------------------


def out_of_memory(message: str) -> tuple[float, float] | None:
    """(needed, available) GiB from XLA's refusal of a program over the chip's memory (what
    it needs at least: the figure it names may be one kind of buffer only), else None."""
    if "RESOURCE_EXHAUSTED" not in message:
        return None
    match = next(filter(None, (pattern.search(message) for pattern in _OUT_OF_MEMORY)), None)
    if not match:
        return None
    used, used_unit, limit, limit_unit = match.groups()
    return (
        float(used) * _UNITS[used_unit] / GIB,
        float(limit) * _UNITS[limit_unit] / GIB,
    )


def verdict(used_gib: float, capacity_gib: float) -> str:
    fits = "fits" if used_gib <= capacity_gib else "does not fit"
    return f"per-device memory: {used_gib:.2f} GiB of {capacity_gib:.2f} GiB: {fits}"


def check(flags: argparse.ArgumentParser, argv: Sequence[str]) -> int:
    """Compile the step for the topology, print the figures and the verdict: the exit code."""
    args, bindings = gin_utils.parse_flags(flags, argv)
    _prepare_backends(args)
    description, devices, capacity, platform = target(args)
    try:  # dsbs-train's gin files import its module, which loads TensorFlow
        with console.quietly():
            gin_utils.parse(args.gin_file, bindings + accelerator_dtype(args, bindings), PROG)
    except (ValueError, FileNotFoundError) as error:  # gin's unknown names; missing files
        raise ConfigError(str(error)) from None
    trainer, batch, described = build(devices)
    teacher = trainer.distiller.abstract_teacher_params if trainer.online else None
    print(f"{PROG}: {description}")
    print(f"model: {described['model']}")
    print(f"step: {described['step']}")
    print(f"batch: {described['batch']}")
    print(f"mesh: {mesh_line(trainer.mesh)}", flush=True)
    started = time.monotonic()
    figures: dict = {
        "topology": args.topology,
        "platform": platform,
        "mesh": dict(trainer.mesh.shape),
        "parameters": described["parameters"],
        "capacity_bytes": int(capacity * GIB),
    }
    try:
        compiled = aot.compile_step(trainer, batch, teacher)
    except Exception as error:  # XLA's errors: JaxRuntimeError and others
        needed = out_of_memory(str(error))
        if needed is None:
            raise Unavailable(f"compiling the step for {args.topology} failed: {error}") from None
        refusal = str(error).strip().splitlines()[0]
        print(f"compiled in {time.monotonic() - started:.0f} s, and refused: {refusal}")
        print(
            f"the compiler needs at least {needed[0]:.2f} GiB per device, and counts "
            f"{needed[1]:.2f} GiB usable"
        )
        figures |= {"fits": False, "used_bytes": int(needed[0] * GIB), "refused": refusal}
        _write_json(args.json, figures)
        print(verdict(needed[0], capacity))
        return DOES_NOT_FIT
    seconds = time.monotonic() - started
    memory = aot.step_memory(compiled, platform)
    flops = aot.flops(compiled)
    gib = memory.gib()
    shards = "state, batch and teacher" if trainer.online else "state and batch"
    print(f"compiled in {seconds:.0f} s")
    print(
        f"per device: arguments {gib['arguments']:.2f} GiB ({shards} shards), outputs "
        f"{gib['outputs']:.2f} GiB ({gib['aliased']:.2f} aliased to the donated state), "
        f"temporaries {gib['temp']:.2f} GiB, code {gib['code']:.2f} GiB; total "
        f"{gib['total']:.2f} GiB"
        + ("" if memory.peak is None else f"; XLA's peak {gib['xla peak']:.2f} GiB (held)")
    )
    if flops is not None:
        count = trainer.mesh.devices.size
        print(f"FLOPs per step: {flops:.3g} per device, {flops * count:.3g} in all")
    if platform == "cpu":
        print("(XLA's CPU compiler: an estimate of what a GPU or TPU would hold)")
    used = memory.held / GIB
    figures |= {
        "fits": used <= capacity,
        "used_bytes": memory.held,
        "memory_bytes": dataclasses.asdict(memory),
        "flops_per_device": flops,
        "compile_seconds": seconds,
    }
    _write_json(args.json, figures)
    print(verdict(used, capacity))
    return FITS if used <= capacity else DOES_NOT_FIT


def _write_json(path: str | None, figures: Mapping) -> None:
    if path:
        with open(path, "w") as stream:
            json.dump(figures, stream, indent=1)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    flags = parser()
    console.setup(flags, argv)
    try:
        return check(flags, argv)
    except cli.UsageError as error:
        print(f"{PROG}: {' '.join(str(error).split())}", file=sys.stderr)
        return USAGE
    except Unavailable as error:
        print(f"{PROG}: {error}", file=sys.stderr)
        return FAILED


if __name__ == "__main__":
    sys.exit(main())
