"""Device memory of one distilling step-by-step training step, from XLA's compiled program.

Builds a `Trainer` (mode dsbs, alpha 0.5, Adafactor, bfloat16 activations, remat by default:
the setup for XL and XXL students) and lowers `Trainer.train_step` with `jax.ShapeDtypeStruct`
arguments that carry the state's and the batch's shardings, so no parameter is allocated
and XXL fits in a laptop's memory (`dsbs_jax.aot`, shared with `dsbs-fit`, which also
compiles for TPU slices this host does not have). It compiles the step and prints, per
device, what `compiled.memory_analysis()` says: arguments (state and batch), outputs (new
state and metrics), temporaries (activations, gradients, optimiser scratch), generated
code, and the total a device must hold, arguments + outputs + temporaries - aliased (the
donated state is updated in place, so its outputs alias its arguments). Then whether that
fits an H200 (`--capacity-gib`, default 139 GiB: what an H200's 141 GB leaves usable). JAX
on GPU takes 75% of the memory by default: a step near the limit needs
`XLA_PYTHON_CLIENT_MEM_FRACTION` raised.

`--devices N` runs on N devices, a `data` x `model` mesh with `--model_parallelism` devices
on the model axis. On a CPU-only host these are N host devices (`XLA_FLAGS=
--xla_force_host_platform_device_count=N`, set before JAX is imported), so the figures are
those of XLA's CPU compiler: an approximation of a GPU's, whose compiler fuses, schedules
and lays out buffers differently (temporaries most of all). One difference is large: XLA's
CPU compiler does not schedule a rematerialised forward pass late, so on CPU `--remat`
hardly lowers the temporaries (checked on a stack of `jax.checkpoint`ed layers: the same
temp size with and without). The CPU total is therefore about the no-remat footprint,
pessimistic for a remat run on GPU. On a GPU host with N GPUs the same command compiles
for the GPUs and gives their own figures: only that settles a step near the limit.
Compiling XXL on a CPU takes a long time; try `--size small` first.

`--teacher SIZE` adds an online teacher, as a distilling run has: the `Trainer` gets
`Distillation(teacher, 1.0, dtype=--teacher_dtype)` (the logits' KL on both tasks; the
teacher is that size with the student's `vocab_size`, since it must share the student's
vocabulary) and the step is compiled with `Distiller.abstract_teacher_params` as its third
argument, again allocating nothing. The teacher's parameters (in `--teacher_dtype`, default
bfloat16) count among the arguments and are not aliased (read, never donated); its forward
pass, without remat and without dropout, adds to the temporaries. The line names the
teacher and its parameter count.

    python bench/memory.py [--size xxl] [--devices 1|8] [--model_parallelism 1]
                           [--batch 32] [--inputs 1024] [--rationale 256] [--label 16]
                           [--dtype bfloat16] [--no-remat] [--microbatches 1]
                           [--teacher SIZE] [--teacher_dtype bfloat16|float32]
                           [--capacity-gib 139]

For example, a T5-base student distilled from a Flan-T5-XL teacher (T5.1.1 XL's shapes):

    python bench/memory.py --size base --teacher xl --batch 64 --inputs 1024 \\
                           --rationale 256 --label 32
"""

import argparse
import dataclasses
import os


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="xxl", help="a size of common.SIZES")
    parser.add_argument("--devices", type=int, default=1, help="devices in the mesh")
    parser.add_argument("--model_parallelism", type=int, default=1, help="model-axis devices")
    parser.add_argument("--batch", type=int, default=32, help="global examples per step")
    parser.add_argument("--inputs", type=int, default=1024, help="encoder tokens per example")
    parser.add_argument("--rationale", type=int, default=256, help="rationale target tokens")
    parser.add_argument("--label", type=int, default=16, help="label target tokens")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="bfloat16")
    parser.add_argument("--no-remat", dest="remat", action="store_false")
    parser.add_argument("--microbatches", type=int, default=1, help="gradient accumulation")
    parser.add_argument("--teacher", help="an online teacher's size of common.SIZES (none: no KD)")
    parser.add_argument(
        "--teacher_dtype",
        choices=("float32", "bfloat16"),
        default="bfloat16",
        help="the teacher's parameters and activations",
    )
    parser.add_argument("--capacity-gib", type=float, default=139.0, help="memory per device")
    return parser.parse_args()


def host_device_flags(xla_flags: str, count: int) -> str:
    """`xla_flags` asking XLA's CPU backend for `count` devices, any earlier count replaced."""
    name = "--xla_force_host_platform_device_count"
    kept = [flag for flag in xla_flags.split() if not flag.startswith(f"{name}=")]
    return " ".join([*kept, f"{name}={count}"])


if __name__ == "__main__":
    # XLA reads the host device count once, when JAX starts: set it before importing jax.
    os.environ["XLA_FLAGS"] = host_device_flags(
        os.environ.get("XLA_FLAGS", ""), parse_args().devices
    )

import jax  # noqa: E402
from common import SIZES, log  # noqa: E402
from train_step import ALPHA  # noqa: E402

from dsbs_jax import losses, optimizers, partitioning  # noqa: E402
from dsbs_jax.aot import compile_step, padded_batch, step_memory  # noqa: E402
from dsbs_jax.distill import Distillation  # noqa: E402
from dsbs_jax.trainer import Trainer  # noqa: E402


def main() -> None:
    args = parse_args()
    if jax.device_count() != args.devices:
        raise SystemExit(
            f"--devices {args.devices}, but {jax.devices()[0].platform} has "
            f"{jax.device_count()}: on a GPU or TPU host, JAX_PLATFORMS=cpu estimates on CPU"
        )
    for flag, size in (("--size", args.size), ("--teacher", args.teacher)):
        if size is not None and size not in SIZES:
            raise SystemExit(f"{flag} {size}: not one of {', '.join(SIZES)}")
    config = dataclasses.replace(SIZES[args.size], dtype=args.dtype, remat=args.remat)
    distillation = None
    if args.teacher:
        # The teacher must share the student's vocabulary (T5.1.1 sizes all have 32128).
        teacher_config = dataclasses.replace(SIZES[args.teacher], vocab_size=config.vocab_size)
        distillation = Distillation(teacher_config, 1.0, dtype=args.teacher_dtype)
    mesh = partitioning.make_mesh(args.model_parallelism)
    trainer = Trainer(
        config,
        optimizers.adafactor(),
        mesh,
        losses.task_weights("dsbs", ALPHA),
        num_microbatches=args.microbatches,
        distillation=distillation,
    )
    params = sum(leaf.size for leaf in jax.tree.leaves(trainer.abstract_state.params))
    teacher_params, teacher = None, "teacher=none"
    if args.teacher:
        teacher_params = trainer.distiller.abstract_teacher_params
        count = sum(leaf.size for leaf in jax.tree.leaves(teacher_params))
        teacher = f"teacher={args.teacher} teacher_params={count / 1e9:.3g}B "
        teacher += f"teacher_dtype={args.teacher_dtype}"
    batch = padded_batch(
        {
            losses.LABEL: (args.batch, args.inputs, args.label),
            losses.RATIONALE: (args.batch, args.inputs, args.rationale),
        }
    )
    log(
        f"compiling the {args.size} step ({params / 1e9:.3g}B parameters, {teacher}), "
        f"mesh {dict(mesh.shape)}"
    )
    platform = jax.devices()[0].platform
    gib = step_memory(compile_step(trainer, batch, teacher_params), platform).gib()
    fits = "fits" if gib["total"] <= args.capacity_gib else "does NOT fit"
    estimate = " (CPU compile: an estimate, see the docstring)" if platform == "cpu" else ""
    print(
        f"dsbs train step memory size={args.size} params={params / 1e9:.3g}B batch={args.batch} "
        f"inputs={args.inputs} rationale={args.rationale} label={args.label} "
        f"dtype={args.dtype} remat={args.remat} microbatches={args.microbatches} "
        f"{teacher} optimizer=adafactor devices={args.devices} mesh={dict(mesh.shape)} "
        f"platform={platform} | per device, GiB: "
        + ", ".join(f"{kind} {value:.2f}" for kind, value in gib.items())
        + f" | {fits} in {args.capacity_gib:g} GiB{estimate}"
    )


if __name__ == "__main__":
    main()
