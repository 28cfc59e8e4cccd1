"""Distilling step-by-step training-step throughput: our `Trainer` versus Hugging Face PyTorch.

One step is what `dsbs-train` runs in mode `dsbs` with alpha 0.5. The same examples feed two
tasks: the label task (encoder inputs -> short label targets) and the rationale task (the
same inputs -> longer rationale targets), each its own forward and backward pass; the loss is
0.5 * label + 0.5 * rationale (per-task token means), gradients are clipped to global norm 1
and AdamW updates the parameters. Ours is `Trainer.train_step` (jitted, the state donated);
theirs is `T5ForConditionalGeneration` with the same weights: two forward passes with
`labels=`, `backward()`, `clip_grad_norm_` and a `torch.optim.AdamW` step, denormals flushed,
as many torch threads as JAX has CPU cores. The two take turns (`common.time_in_turns`); the
figures are medians over `--steps` steps after compiling and a warm-up step. With `--dtype
bfloat16` ours computes activations in bfloat16 and torch runs under CPU autocast to bfloat16;
parameters and optimiser state stay float32 in both.

FLOPs per step are `Trainer.flops_per_step` (XLA's cost analysis of the compiled step, per
device; with `--remat` it includes the recomputed forward passes), times the device count.
MFU is per-device FLOPs / step time / per-device peak. The peak is `--peak-tflops` if given;
else, on GPU and TPU, `dsbs_jax.progress.PEAK_FLOPS` for the device kind (the dense bfloat16
datasheet figure, so float32 steps look worse than they are); else, on CPU, a measured
n x n matmul in the step's dtype (`common.matmul_peak_gflops`, the best of `jnp.dot` and,
unless `--no-torch`, `torch.matmul`).

`--no-torch` times ours alone, and imports neither torch nor transformers: for accelerator
hosts without them. `--no-ours` times torch alone (ours is compiled for the FLOP count, never
run): with `--no-torch` in another process, each side without the other's thread pools.
Nothing here imports TensorFlow.

    python bench/train_step.py [--size small] [--batch 16] [--inputs 128] [--rationale 64]
                               [--label 8] [--steps 5] [--dtype float32|bfloat16] [--remat]
                               [--no-torch | --no-ours] [--peak-tflops T]
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import jax
import numpy as np
from common import (
    SIZES,
    cpu_cores,
    log,
    matmul_peak_gflops,
    random_tokens,
    setup_torch,
    shift_right,
    thread_counts,
    time_in_turns,
    to_hf,
)

from dsbs_jax import losses, optimizers, partitioning
from dsbs_jax.models import T5Config
from dsbs_jax.progress import PEAK_FLOPS
from dsbs_jax.trainer import Trainer, TrainState

if TYPE_CHECKING:
    import transformers

ALPHA = 0.5
# The AdamW schedule decays linearly to 0 at this step: far beyond the steps timed here.
SCHEDULE_STEPS = 10_000
Features = dict[str, np.ndarray]
Batch = dict[str, Features]  # task -> features


def task_features(encoder_tokens: np.ndarray, targets: np.ndarray) -> Features:
    """One task's unpacked `EncDecFeatureConverter` features, every target token weighted."""
    return {
        "encoder_input_tokens": encoder_tokens,
        "decoder_input_tokens": shift_right(targets),
        "decoder_target_tokens": targets,
        "decoder_loss_weights": np.ones_like(targets),
    }


def make_batch(config: T5Config, batch: int, inputs: int, rationale: int, label: int) -> Batch:
    """Random examples, no padding: the label and rationale tasks of the same inputs."""
    encoder_tokens = random_tokens(1, batch, inputs, config.vocab_size)
    lengths = {losses.LABEL: label, losses.RATIONALE: rationale}
    return {
        task: task_features(encoder_tokens, random_tokens(seed, batch, length, config.vocab_size))
        for seed, (task, length) in enumerate(lengths.items(), start=2)
    }


def add_batch_arguments(
    parser: argparse.ArgumentParser, batch: int, inputs: int, rationale: int, label: int
) -> None:
    """`--batch --inputs --rationale --label`: `make_batch`'s shape, each script's defaults."""
    parser.add_argument("--batch", type=int, default=batch, help="examples per step")
    parser.add_argument("--inputs", type=int, default=inputs, help="encoder tokens per example")
    parser.add_argument("--rationale", type=int, default=rationale, help="rationale target tokens")
    parser.add_argument("--label", type=int, default=label, help="label target tokens")


def jax_step(
    trainer: Trainer, state: TrainState, batch: Batch, teacher_params=None
) -> tuple[Callable[[], float], float]:
    """Our training step from `state` (returns the loss), and XLA's FLOPs per device; with
    `teacher_params` for a trainer with an online teacher (`bench/kd_step.py`).

    The state is donated, so each call replaces it with the step's output; blocking on the
    whole output makes the call's time that of the step."""
    arrays = partitioning.global_batch(trainer.mesh, batch)
    flops = trainer.flops_per_step(state, arrays, teacher_params)
    if flops is None:
        raise RuntimeError(f"XLA gives no FLOP count on {jax.devices()[0].platform}")

    def step() -> float:
        nonlocal state
        state, metrics = jax.block_until_ready(
            trainer.run_train_step(state, arrays, teacher_params)
        )
        return float(metrics["loss"])

    return step, flops


def torch_step(
    model: transformers.T5ForConditionalGeneration, batch: Batch, dtype: str
) -> Callable[[], float]:
    """The same step in PyTorch: both tasks' losses blended, backward, clip, AdamW."""
    import contextlib

    import torch

    tensors = {
        task: {name: torch.from_numpy(x).long() for name, x in features.items()}
        for task, features in batch.items()
    }
    weights = losses.task_weights("dsbs", ALPHA)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.0, eps=1e-8)
    model.train()

    def autocast() -> contextlib.AbstractContextManager:
        if dtype == "float32":
            return contextlib.nullcontext()
        return torch.autocast("cpu", dtype=getattr(torch, dtype))

    def task_loss(features: Mapping[str, torch.Tensor]) -> torch.Tensor:
        # All weights are 1, so HF's mean over `labels` is our per-task token mean.
        return model(
            input_ids=features["encoder_input_tokens"],
            decoder_input_ids=features["decoder_input_tokens"],
            labels=features["decoder_target_tokens"],
        ).loss

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        with autocast():
            loss = sum(weights[task] * task_loss(tensors[task]) for task in weights)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        return loss.item()

    return step


def peak_flops(args: argparse.Namespace) -> tuple[float | None, str]:
    """Per-device peak FLOP/s for MFU, and where it comes from (see the module docstring)."""
    if args.peak_tflops:
        return args.peak_tflops * 1e12, "given"
    device = jax.devices()[0]
    if device.platform != "cpu":
        peak = PEAK_FLOPS.get(device.device_kind)
        return peak, f"{device.device_kind} bf16 datasheet" if peak else "unknown device"
    log(f"measuring the {args.dtype} matmul peak")
    peaks = matmul_peak_gflops(dtype=args.dtype, with_torch=not args.no_torch)
    measured = ", ".join(f"{name} {gflops:.0f}" for name, gflops in peaks.items())
    return max(peaks.values()) * 1e9, f"measured {args.dtype} matmul GFLOP/s: {measured}"


def figures(name: str, seconds: float, batch: int, flops: float, peak: float | None) -> str:
    """One contender's part of the result line."""
    mfu = f"MFU {flops / seconds / peak:.1%}" if peak else "MFU n/a"
    return f"{name} {seconds:.3f} s/step, {batch / seconds:.1f} examples/s, {mfu}"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    add_batch_arguments(parser, batch=16, inputs=128, rationale=64, label=8)
    parser.add_argument("--steps", type=int, default=5, help="timed steps each (after warm-up)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--remat", action="store_true", help="rematerialise each layer")
    parser.add_argument("--no-torch", action="store_true", help="time ours alone")
    parser.add_argument(
        "--no-ours", action="store_true", help="time torch alone (ours only compiled, for FLOPs)"
    )
    parser.add_argument("--peak-tflops", type=float, help="per-device peak, for MFU")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    config = dataclasses.replace(SIZES[args.size], dtype=args.dtype, remat=args.remat)
    devices, platform = jax.device_count(), jax.devices()[0].platform
    if not args.no_torch:
        if platform != "cpu":
            raise SystemExit(f"torch runs on CPU here, ours on {platform}: pass --no-torch")
        setup_torch(threads=cpu_cores())
    peak, peak_source = peak_flops(args)

    log(f"building {args.size} trainer on {devices} {platform} device(s)")
    mesh = partitioning.make_mesh()
    trainer = Trainer(
        config,
        optimizers.adamw(SCHEDULE_STEPS),
        mesh,
        losses.task_weights("dsbs", ALPHA),
    )
    batch = make_batch(config, args.batch, args.inputs, args.rationale, args.label)
    state = trainer.create_state(seed=0)
    contenders: dict[str, Callable[[], float]] = {}
    if not args.no_torch:
        # Copied before our first step, which donates (deletes) the initial state.
        model = to_hf(config, jax.device_get(state.params))
        contenders["torch"] = torch_step(model, batch, args.dtype)
    log("compiling ours")
    ours, flops = jax_step(trainer, state, batch)
    del state  # the step owns it now
    if not args.no_ours:
        contenders = {"ours": ours, **contenders}
    first = ", ".join(f"{name} {fn():.6f}" for name, fn in contenders.items())
    agree = " (same weights and batch: should agree closely)" if len(contenders) > 1 else ""
    log(f"first-step loss: {first}{agree}")

    log(f"timing {' and '.join(contenders)}")
    timings = time_in_turns(contenders, warmup=1, runs=args.steps)
    log("; ".join(f"{name}: {timing}" for name, timing in timings.items()))

    seconds = {name: timing.median for name, timing in timings.items()}
    threads = thread_counts() if not args.no_torch else f"cpus={cpu_cores()}"
    parts = [
        f"dsbs train step size={args.size} batch={args.batch} inputs={args.inputs} "
        f"rationale={args.rationale} label={args.label} dtype={args.dtype} "
        f"remat={args.remat} devices={devices} {threads}",
        *(figures(name, s, args.batch, flops, peak) for name, s in seconds.items()),
    ]
    if len(seconds) == 2:
        parts.append(f"ours/torch {seconds['torch'] / seconds['ours']:.2f}x")
    parts.append(f"{flops * devices / 1e9:.1f} GFLOP/step (XLA cost_analysis)")
    parts.append(f"peak {peak / 1e12:.3g} TFLOP/s per device ({peak_source})" if peak else "")
    print(" | ".join(part for part in parts if part))


if __name__ == "__main__":
    main()
