"""Step-time overhead of an online teacher: the dsbs training step with and without one.

Two `Trainer`s of the same student on one mesh (`partitioning.make_mesh(1)`), both in mode
`dsbs` with alpha 0.5 and AdamW, exactly as `bench/train_step.py` builds its trainer: one
plain, one with `Distillation(teacher, 1.0, 2.0)`, a frozen random teacher that runs inside
the step on both tasks' batches (teacher-forced, no dropout, no remat, in `--teacher_dtype`)
and adds the token KL at temperature 2 to the blend. Both take the same random batch
(`train_step.make_batch`) from the same initial student; each step donates its state. The
two take turns (`common.time_in_turns`), and the figures are medians over `--steps` rounds
after compiling and one warm-up step. The overhead is with / without - 1.

The teacher must share the student's vocabulary, so it is `--teacher`'s size with the
student's `vocab_size` (`dataclasses.replace(SIZES[teacher], vocab_size=...)`): with the
`tiny` student (512 tokens) a `small` teacher has small's layers but a 512-token embedding
and head, so fewer parameters than T5.1.1 small. Its weights are random (our `T5.init`,
unboxed, fetched to the host, then `Distiller.place_teacher`): only the time is measured.

FLOPs per step are `Trainer.flops_per_step` (XLA's cost analysis of each compiled step, per
device) times the device count; their ratio is the work the teacher adds, to set beside the
time it adds. On CPU the teacher runs in float32 by default (`--teacher_dtype`), since XLA's
CPU backend is slow in bfloat16; pass bfloat16 to time what a GPU run would use. Nothing here
imports TensorFlow or torch.

    python bench/kd_step.py [--student tiny] [--teacher tiny|small] [--batch 16]
                            [--inputs 128] [--rationale 64] [--label 8] [--steps 5]
                            [--dtype float32|bfloat16] [--teacher_dtype float32|bfloat16]
"""

from __future__ import annotations

import argparse
import dataclasses

import jax
from common import SIZES, init_params, log, time_in_turns
from train_step import ALPHA, SCHEDULE_STEPS, add_batch_arguments, jax_step, make_batch

from dsbs_jax import losses, optimizers, partitioning
from dsbs_jax.distill import Distillation
from dsbs_jax.models import T5Config
from dsbs_jax.trainer import Params, Trainer

KD_WEIGHT = 1.0
TEMPERATURE = 2.0


def random_teacher(trainer: Trainer, config: T5Config, seed: int = 1) -> Params:
    """Random float32 teacher weights made on the host, placed as a run places a checkpoint's."""
    return trainer.distiller.place_teacher(jax.device_get(init_params(config, seed)))


def count(tree) -> int:
    return sum(leaf.size for leaf in jax.tree.leaves(tree))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--student", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--teacher", choices=sorted(SIZES), default="tiny")
    add_batch_arguments(parser, batch=16, inputs=128, rationale=64, label=8)
    parser.add_argument("--steps", type=int, default=5, help="timed steps each (after warm-up)")
    parser.add_argument(
        "--dtype", choices=("float32", "bfloat16"), default="float32", help="student activations"
    )
    parser.add_argument(
        "--teacher_dtype",
        choices=("float32", "bfloat16"),
        default="float32",
        help="teacher parameters and activations",
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    config = dataclasses.replace(SIZES[args.student], dtype=args.dtype)
    teacher_config = dataclasses.replace(SIZES[args.teacher], vocab_size=config.vocab_size)
    devices, platform = jax.device_count(), jax.devices()[0].platform
    mesh = partitioning.make_mesh(1)

    def trainer(distillation: Distillation | None) -> Trainer:
        return Trainer(
            config,
            optimizers.adamw(SCHEDULE_STEPS),
            mesh,
            losses.task_weights("dsbs", ALPHA),
            distillation=distillation,
        )

    log(f"building {args.student} trainers on {devices} {platform} device(s)")
    plain = trainer(None)
    distillation = Distillation(teacher_config, KD_WEIGHT, TEMPERATURE, dtype=args.teacher_dtype)
    distilling = trainer(distillation)
    student_params = count(plain.abstract_state.params)
    teacher_params = count(distilling.distiller.abstract_teacher_params)
    log(
        f"student {student_params / 1e6:.3g}M parameters, {args.teacher} teacher "
        f"{teacher_params / 1e6:.3g}M ({args.teacher_dtype}, vocab {teacher_config.vocab_size})"
    )
    batch = make_batch(config, args.batch, args.inputs, args.rationale, args.label)

    # Both from seed 0: the same student, with and without the teacher.
    log("compiling the step without a teacher")
    without, flops_without = jax_step(plain, plain.create_state(seed=0), batch)
    log("initialising the teacher; compiling the step with it")
    teacher = random_teacher(distilling, teacher_config)
    with_teacher, flops_with = jax_step(distilling, distilling.create_state(seed=0), batch, teacher)
    contenders = {"without": without, "with": with_teacher}
    for name, fn in contenders.items():
        log(f"first step {name} teacher: loss {fn():.4f}")

    log("timing the steps without and with the teacher")
    timings = time_in_turns(contenders, warmup=1, runs=args.steps)
    log("; ".join(f"{name}: {timing}" for name, timing in timings.items()))

    seconds = {name: timing.median for name, timing in timings.items()}
    ratio = seconds["with"] / seconds["without"]
    flops_ratio = flops_with / flops_without
    flops = {"without": flops_without, "with": flops_with}
    gflops = {name: f * devices / 1e9 for name, f in flops.items()}
    setup = (
        f"online-teacher step student={args.student} teacher={args.teacher} "
        f"student_params={student_params / 1e6:.3g}M teacher_params={teacher_params / 1e6:.3g}M "
        f"batch={args.batch} inputs={args.inputs} rationale={args.rationale} label={args.label} "
        f"dtype={args.dtype} teacher_dtype={args.teacher_dtype} kd_weight={KD_WEIGHT:g} "
        f"temperature={TEMPERATURE:g} devices={devices} platform={platform}"
    )
    parts = [
        setup,
        f"without {seconds['without']:.3f} s/step, with {seconds['with']:.3f} s/step "
        f"(medians of {args.steps})",
        f"with/without {ratio:.2f}x (overhead {ratio - 1:+.0%})",
        f"GFLOP/step without {gflops['without']:.2f}, with {gflops['with']:.2f}, "
        f"ratio {flops_ratio:.2f}x (XLA cost_analysis)",
    ]
    print(" | ".join(parts))


if __name__ == "__main__":
    main()
