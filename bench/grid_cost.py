"""What a grid of training runs costs in device-hours, from XLA's FLOP counts and a measured step.

The paper's grid (gin/runs/paper/grid.json) restricted to one size: `launch/sweep.py`'s
`load_grid` and `expand` list its runs, and each run's settings are read from the gin files
the run reads (the grid's, then its dataset/, method/ and size/ files, following `include`s;
top-level `NAME = value` lines only, the last one winning, as in gin): its `MODE`, its
`TASK_FEATURE_LENGTHS`, `BATCH_SIZE`, `TRAIN_STEPS`, `EVAL_PERIOD` and the size file's
`T5Config.remat`. `--inputs`, `--label`, `--rationale`, `--cot`, `--batch` and `--steps`
override `INPUT_LENGTH`, `LABEL_LENGTH`, `RATIONALE_LENGTH`, `COT_LENGTH`, `BATCH_SIZE` and
`TRAIN_STEPS` for every run, as `--gin.NAME=VALUE` would.

1. FLOPs per step. For each distinct step of the grid (one per mode: `standard`, the label
   task alone; `dsbs`, the label and rationale tasks of the same inputs; `cot`, the
   chain-of-thought target fed as the label task) a `Trainer` of that mode (AdamW) is built
   and its training step compiled for the run's shapes with abstract arguments
   (`memory.compile_step`: nothing the size of the model is allocated), and XLA's
   `cost_analysis()` gives its FLOPs, as `Trainer.flops_per_step` reads them. The batch
   holds only the tasks the mode trains on, unpadded random tokens at the full lengths:
   the trainer's batches are padded to those lengths, so every step of a run costs the same.
2. Total = sum over runs of steps x FLOPs per step.
3. Achieved FLOP/s. Our real dsbs training step at `bench/train_step.py`'s default setting
   (T5.1.1-small, batch 16, inputs 128, rationale 64, label 8, float32, `train_step.jax_step`)
   is timed for `--measure-steps` steps after a warm-up (median): its XLA FLOPs over its
   seconds. Device-hours = total FLOPs / achieved FLOP/s / 3600. The assumption: the grid's
   larger matmuls (T5.1.1-base at batch 64 x 1,024 tokens) run at least as efficiently as
   small's at 16 x 128, so the figure is an upper bound on this machine's time (its MFU was
   already 82% of the measured matmul peak, BENCHMARKS.md, so not by much). On a shared
   machine the step is slowed by whatever else runs: the result line says what the machine's
   load average was. `--achieved-gflops G` skips the measurement and uses G (say so when
   quoting it): on a GPU, where small's step says little about base's, take G from
   `bench/train_step.py --size base --no-torch` there.
4. `--assume-tflops T --assume-mfu M` adds device-hours at T x M FLOP/s (say 989 TFLOP/s, an
   H200's dense bfloat16, at 0.4): an assumption, labelled as one, never a measurement.

Evaluation is not in the total. Its share is estimated (unless `--no-eval`) as an upper
bound: every `EVAL_PERIOD` steps a run computes each task's teacher-forced loss on the
validation split and greedily decodes its label task there; at the end it decodes validation
and test again. Each is counted as XLA's FLOPs of `Trainer.eval_step` (the teacher-forced
forward pass) on batches of 64 at the full lengths, the decoding as the label task's
forward pass: the incremental decoder does the same matmuls per target token, and does
fewer when it cuts a batch's input padding or every row has ended, so this bounds it from
above. Split sizes: `EVAL_EXAMPLES` (the release's, validation held out of train as 10%
where the release has none).

`--dtype` is the activations' dtype of the compiled steps (float32 by default, the
measurement's; the paper's runs compute in bfloat16: the same matmuls, so the count should
barely move, not checked here). `--steps`, `--batch` and the lengths apply to every run.
Nothing here imports TensorFlow or PyTorch. Compiling base at 1,024 input tokens takes
minutes on two cores.

`--model tiny` compiles a tiny model in place of the size's (a smoke test of the script).

    python bench/grid_cost.py [--grid gin/runs/paper/grid.json] [--size base] [--model M]
                              [--batch 64] [--inputs 1024] [--label 32] [--rationale 256]
                              [--cot 256] [--steps 10000] [--dtype float32] [--no-eval]
                              [--measure-steps 3 | --achieved-gflops G]
                              [--assume-tflops 989 --assume-mfu 0.4]
"""

from __future__ import annotations

import argparse
import ast
import collections
import dataclasses
import importlib.util
import math
import os
import pathlib
import re
from collections.abc import Mapping

import jax
from common import SIZES, log, time_in_turns
from memory import compile_step
from train_step import ALPHA, SCHEDULE_STEPS, Batch, jax_step, make_batch

from dsbs_jax import losses, optimizers, partitioning
from dsbs_jax.trainer import Trainer

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_GRID = ROOT / "gin" / "runs" / "paper" / "grid.json"
# bench/train_step.py's defaults: the step whose FLOP/s this machine has been measured at.
MEASURE = {"size": "small", "batch": 16, "inputs": 128, "rationale": 64, "label": 8}
# dsbs-train's train.eval_batch_size (not bound by the paper's gin files).
EVAL_BATCH = 64
# (validation, test) examples of the release: CQA and SVAMP hold 10% of train out for
# validation (ceil(0.1 x 9,741), ceil(0.1 x 800)); e-SNLI and ANLI-R1 have their own.
EVAL_EXAMPLES = {
    "cqa": (975, 1221),
    "svamp": (80, 200),
    "esnli": (9842, 9824),
    "anli1": (1000, 1000),
}
OVERRIDES = {  # flag -> the gin macro it replaces
    "inputs": "INPUT_LENGTH",
    "label": "LABEL_LENGTH",
    "rationale": "RATIONALE_LENGTH",
    "cot": "COT_LENGTH",
    "batch": "BATCH_SIZE",
    "steps": "TRAIN_STEPS",
}


def import_sweep():
    """`launch/sweep.py` as a module (launch/ is not a package)."""
    spec = importlib.util.spec_from_file_location("sweep", ROOT / "launch" / "sweep.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


sweep = import_sweep()

ASSIGNMENT = re.compile(r"^([A-Za-z_][\w.]*)\s*=\s*(.+?)\s*$")
INCLUDE = re.compile(r"^include\s+['\"]([^'\"]+)['\"]")
REFERENCE = re.compile(r"%([A-Za-z_][\w.]*)")


def read_gin(path: pathlib.Path, values: dict[str, str]) -> dict[str, str]:
    """`values` updated with the top-level `NAME = value` lines of `path` and of the files it
    includes (where they are included), unevaluated. Blocks (indented lines) are skipped."""
    for line in path.read_text().splitlines():
        if match := INCLUDE.match(line):
            read_gin(sweep.GIN_DIR / match[1], values)
        elif match := ASSIGNMENT.match(line):
            values[match[1]] = match[2]
    return values


def resolve(values: Mapping[str, str], name: str) -> object:
    """The Python value of `name`, its `%MACRO` references resolved."""
    if name not in values:
        raise KeyError(f"{name} is bound in none of the run's gin files")
    text = REFERENCE.sub(lambda m: repr(resolve(values, m[1])), values[name])
    return ast.literal_eval(text)


@dataclasses.dataclass(frozen=True)
class Shape:
    """What a run's training step costs depends on only these."""

    mode: str
    batch: int
    lengths: tuple[tuple[str, int], ...]  # ('inputs', n) and each trained task's target
    remat: bool


@dataclasses.dataclass(frozen=True)
class GridRun:
    dataset: str
    shape: Shape
    steps: int
    eval_period: int


def grid_runs(grid_path: pathlib.Path, size: str, overrides: Mapping[str, int]) -> list[GridRun]:
    """The grid's runs of `size`, each with the settings its gin files give it."""
    grid = sweep.load_grid(grid_path)
    runs = []
    for run in sweep.expand(grid_path, grid, [f"size={size}"]):
        values: dict[str, str] = {}
        for name in (*grid.get("gin_files", ()), *run.gin_files):
            read_gin(sweep.GIN_DIR / name, values)
        values.update(binding.split("=", 1) for binding in run.bindings)
        values.update({name: repr(value) for name, value in overrides.items()})
        remat = [v for k, v in values.items() if k.endswith("T5Config.remat")]
        lengths = resolve(values, "TASK_FEATURE_LENGTHS")
        shape = Shape(
            mode=resolve(values, "MODE"),
            batch=resolve(values, "BATCH_SIZE"),
            lengths=tuple(sorted(lengths.items())),
            remat=ast.literal_eval(remat[-1]) if remat else False,
        )
        dataset = next(pathlib.Path(f).stem for f in run.gin_files if "/dataset/" in f"/{f}")
        steps, period = resolve(values, "TRAIN_STEPS"), resolve(values, "EVAL_PERIOD")
        runs.append(GridRun(dataset, shape, steps, period))
    return runs


def step_batch(config, shape: Shape, rows: int, tasks) -> Batch:
    """Random features of `rows` examples for `tasks`, at the shape's lengths."""
    lengths = dict(shape.lengths)
    batch = make_batch(
        config,
        rows,
        lengths["inputs"],
        lengths.get(losses.RATIONALE, 1),
        lengths[losses.LABEL],
    )
    return {task: batch[task] for task in tasks}


def xla_flops(compiled: jax.stages.Compiled) -> float:
    """FLOPs of a compiled program by XLA's cost analysis (as `Trainer.flops_per_step`)."""
    analysis = compiled.cost_analysis()
    analysis = analysis[0] if isinstance(analysis, list) else analysis
    if not analysis or "flops" not in analysis:
        raise RuntimeError(f"XLA gives no FLOP count on {jax.devices()[0].platform}")
    return float(analysis["flops"])


class StepCosts:
    """FLOPs of the training and evaluation steps of a model size, compiled once per shape."""

    def __init__(self, size: str, dtype: str):
        self.size, self.dtype = size, dtype
        self.mesh = partitioning.make_mesh()
        self._eval: dict[tuple, float] = {}

    def trainer(self, shape: Shape) -> Trainer:
        config = dataclasses.replace(SIZES[self.size], dtype=self.dtype, remat=shape.remat)
        weights = losses.task_weights(shape.mode, ALPHA)
        return Trainer(config, optimizers.adamw(SCHEDULE_STEPS), self.mesh, weights)

    def train(self, shape: Shape) -> float:
        trainer = self.trainer(shape)
        batch = step_batch(trainer.config, shape, shape.batch, trainer.task_weights)
        return xla_flops(compile_step(trainer, batch)) * jax.device_count()

    def eval_step(self, shape: Shape, tasks) -> float:
        """FLOPs of `Trainer.eval_step` on a batch of EVAL_BATCH rows of `tasks`."""
        trainer = self.trainer(shape)
        batch = step_batch(trainer.config, shape, EVAL_BATCH, tasks)
        key = tuple((task, f["decoder_target_tokens"].shape) for task, f in batch.items())
        key += (batch[next(iter(batch))]["encoder_input_tokens"].shape, shape.remat)
        if key not in self._eval:
            params = partitioning.abstract_arrays(
                trainer.abstract_state.params, trainer.params_sharding
            )
            arrays = partitioning.abstract_arrays(batch, partitioning.batch_sharding(self.mesh))
            with trainer.scope():
                compiled = trainer.eval_step.lower(params, arrays).compile()
            self._eval[key] = xla_flops(compiled) * jax.device_count()
        return self._eval[key]

    def eval_per_run(self, run: GridRun) -> float | None:
        """Upper bound of one run's evaluation FLOPs (module docstring); None for a dataset
        of unknown split sizes."""
        if run.dataset not in EVAL_EXAMPLES:
            return None
        tasks = tuple(losses.task_weights(run.shape.mode, ALPHA))
        loss = self.eval_step(run.shape, tasks)
        decode = self.eval_step(run.shape, (losses.LABEL,))
        validation, test = (math.ceil(n / EVAL_BATCH) for n in EVAL_EXAMPLES[run.dataset])
        periodic = math.ceil(run.steps / run.eval_period)  # the last step always evaluates
        return periodic * validation * (loss + decode) + (validation + test) * decode


def measure_gflops(steps: int) -> tuple[float, str]:
    """Achieved GFLOP/s of our dsbs step at bench/train_step.py's defaults, and a note."""
    config = dataclasses.replace(SIZES[MEASURE["size"]], dtype="float32")
    weights = losses.task_weights("dsbs", ALPHA)
    trainer = Trainer(config, optimizers.adamw(SCHEDULE_STEPS), partitioning.make_mesh(), weights)
    sizes = [MEASURE[k] for k in ("batch", "inputs", "rationale", "label")]
    log(f"compiling the measured step: dsbs {MEASURE}")
    step, flops = jax_step(trainer, trainer.create_state(seed=0), make_batch(config, *sizes))
    timing = time_in_turns({"dsbs step": step}, warmup=1, runs=steps)["dsbs step"]
    log(f"measured step: {timing}")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    gflops = flops / timing.median / 1e9  # per device, like the FLOPs
    setting = " ".join(f"{k}={v}" for k, v in MEASURE.items())
    note = (
        f"measured dsbs step {setting} float32: {flops / 1e9:.1f} GFLOP in "
        f"{timing.median:.3f} s (median of {steps}, {min(timing.seconds):.3f}"
        f"-{max(timing.seconds):.3f} s) = {gflops:.0f} GFLOP/s per device, "
        f"load average {load:.1f} on {os.cpu_count()} cores"
    )
    return gflops, note


def engineering(flops: float) -> str:
    for unit, scale in (("EFLOP", 1e18), ("PFLOP", 1e15), ("TFLOP", 1e12)):
        if flops >= scale:
            return f"{flops / scale:,.1f} {unit}"
    return f"{flops / 1e9:,.1f} GFLOP"


def duration(seconds: float) -> str:
    hours = seconds / 3600
    years = f" = {hours / 24 / 365.25:,.1f} device-years" if hours >= 24 * 365.25 / 4 else ""
    return f"{hours:,.0f} device-hours{years}"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--grid", type=pathlib.Path, default=DEFAULT_GRID)
    parser.add_argument("--size", default="base", help="the grid's size axis value")
    parser.add_argument(
        "--model", choices=sorted(SIZES), help="compile this model instead (tiny: a smoke test)"
    )
    for flag, macro in OVERRIDES.items():
        parser.add_argument(f"--{flag}", type=int, help=f"overrides {macro} (default: the gin)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--no-eval", action="store_true", help="skip the evaluation estimate")
    parser.add_argument("--measure-steps", type=int, default=3, help="timed steps (median)")
    parser.add_argument("--achieved-gflops", type=float, help="use this instead of measuring")
    parser.add_argument("--assume-tflops", type=float, help="an assumed device peak, TFLOP/s")
    parser.add_argument("--assume-mfu", type=float, help="an assumed fraction of that peak")
    args = parser.parse_args()
    if (args.assume_tflops is None) != (args.assume_mfu is None):
        parser.error("--assume-tflops and --assume-mfu go together")
    return args


def main() -> None:
    args = parse_args()
    overrides = {
        macro: getattr(args, flag)
        for flag, macro in OVERRIDES.items()
        if getattr(args, flag) is not None
    }
    try:
        runs = grid_runs(args.grid, args.size, overrides)
    except (sweep.GridError, KeyError, ValueError) as error:
        raise SystemExit(f"{args.grid}: {error}") from error
    model = args.model or args.size
    if model not in SIZES:
        raise SystemExit(f"--size {args.size}: no such model in common.SIZES; pass --model")
    if not runs:
        raise SystemExit(f"{args.grid}: no runs of size {args.size}")
    by_shape = collections.Counter(run.shape for run in runs)
    log(
        f"{len(runs)} runs of size {args.size}: "
        + ", ".join(f"{n} x {shape}" for shape, n in by_shape.items())
    )

    costs = StepCosts(model, args.dtype)
    per_step = {}
    for shape in by_shape:
        lengths = dict(shape.lengths)
        log(f"compiling the {model} {shape.mode} step ({lengths}, batch {shape.batch})")
        per_step[shape] = costs.train(shape)
        log(f"  {per_step[shape] / 1e12:.2f} TFLOP/step")
    total = sum(run.steps * per_step[run.shape] for run in runs)

    parts = [
        f"grid cost {os.path.relpath(args.grid, ROOT)} size={args.size} "
        + (f"model={model} " if model != args.size else "")
        + f"dtype={args.dtype}",
        "runs "
        + ", ".join(f"{shape.mode} {n}" for shape, n in by_shape.items())
        + f" ({len(runs)}) x "
        + "/".join(sorted({f"{run.steps}" for run in runs}))
        + " steps",
        "TFLOP/step (XLA cost_analysis): "
        + ", ".join(
            f"{shape.mode} {per_step[shape] / 1e12:.2f} "
            f"(batch {shape.batch}, {' '.join(f'{k} {v}' for k, v in shape.lengths)})"
            for shape in by_shape
        ),
        f"training total {engineering(total)} ({total:.3g} FLOP)",
    ]

    if not args.no_eval:
        log("compiling the evaluation steps (teacher-forced forward passes)")
        evals = [costs.eval_per_run(run) for run in runs]
        known = [e for e in evals if e is not None]
        unknown = len(evals) - len(known)
        share = sum(known) / total
        parts.append(
            f"evaluation (excluded, upper bound) {engineering(sum(known))} = {share:.1%} of "
            f"training"
            + (f", {unknown} runs of unknown split sizes not counted" if unknown else "")
        )

    if args.achieved_gflops:
        gflops, note = args.achieved_gflops, f"given {args.achieved_gflops:g} GFLOP/s"
    else:
        gflops, note = measure_gflops(args.measure_steps)
    platform = jax.devices()[0].platform
    parts.append(note)
    parts.append(f"this {platform}: {duration(total / (gflops * 1e9))} (training)")
    if args.assume_tflops:
        rate = args.assume_tflops * 1e12 * args.assume_mfu
        parts.append(
            f"ASSUMED, not measured: {args.assume_tflops:g} TFLOP/s x {args.assume_mfu:.0%} MFU "
            f"= {rate / 1e12:.0f} TFLOP/s per device: {duration(total / rate)}"
        )
    print(" | ".join(parts))


if __name__ == "__main__":
    main()
