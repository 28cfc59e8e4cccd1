"""What a grid of training runs costs in device-hours, from XLA's FLOP counts and a measured step.

The paper's grid (gin/runs/paper/grid.json) restricted to one size: `launch/sweep.py`'s
`load_grid` and `expand` list its runs, and each run's settings are read from the gin files
the run reads (the grid's, then its dataset/, method/ and size/ files, following `include`s;
top-level `NAME = value` lines only, the last one winning, as in gin): its `MODE`,
`LABEL_TASK`, `RATIONALE_TASK`, `TASK_FEATURE_LENGTHS` (each dataset file's
`INPUT_LENGTH`, `LABEL_LENGTH`, `RATIONALE_LENGTH`, `COT_LENGTH`), `BATCH_SIZE`,
`TRAIN_STEPS`, `EVAL_PERIOD`, and `T5Config.remat` and `T5Config.dropout_rate` (paper.gin:
0.1). `--inputs`, `--label`, `--rationale`, `--cot`, `--batch` and `--steps` override
`INPUT_LENGTH`, `LABEL_LENGTH`, `RATIONALE_LENGTH`, `COT_LENGTH`, `BATCH_SIZE` and
`TRAIN_STEPS` for every run, as `--gin.NAME=VALUE` would.

1. FLOPs per step, two estimates (both by default; `--packed` or `--padded` for one).
   Each step is one `Trainer` of the run's mode (AdamW; `standard`: the label task alone;
   `dsbs`: the label and rationale tasks of the same examples; `cot`: the chain-of-thought
   target fed as the label task) whose training step is compiled for the step's shapes
   with abstract arguments (`memory.compile_step`: nothing the size of the model is
   allocated), and XLA's `cost_analysis()` gives its FLOPs, as `Trainer.flops_per_step`
   reads them. Each distinct step is compiled once.
   - packed (how `dsbs-train` runs, `Data.pack`): a step packs `BATCH_SIZE` examples *on
     average* into each task's `RowShape(rows, inputs, targets)` rows, sized as the
     trainer sizes them at start-up: `training_split.plan_packing` (one device, one shard:
     `row_multiple=1`, seed 0) from the token lengths of each task's first 2,000 training
     examples (`training_split.check_lengths`) under the run's feature lengths. So the step is
     compiled for those rows with the features `packing.pack_rows` produces (segment ids
     and positions too), once per distinct (mode, rows). The token lengths come from the
     release (`--manual_dir`, default ../shared/datasets): each dataset is built
     (`dsbs_jax.prepare.build`) into a temporary TFDS dir, and tokenized by a STAND-IN
     vocabulary, an 8,000-piece SentencePiece model trained on the four datasets' text
     (inputs and teacher outputs of every split of cqa, svamp, esnli, anli1), since T5's
     own is not on this machine: the token counts, hence the rows, approximate those of
     T5's 32,000-piece model (not checked against it). The sample release
     has no e-SNLI or ANLI-R1 training split: for those the VALIDATION split's lengths
     stand in for train, over its examples whose teacher output parsed, as the training
     split keeps only those (199 of the sample's 200 in each; the result line says which
     split each dataset was scanned in). The tasks are registered with `TRAIN_FRACTION`
     1.0: a run on a fraction scans a random subsample of the same split, so its rows
     differ only by chance.
   - padded (`--padded`: the estimate before packing): every example costs the full
     feature lengths, `BATCH_SIZE` unpadded rows per task at (inputs, targets) with
     `EncDecFeatureConverter`'s unpacked features, so every step of a run costs the same.
   Both build their abstract batch with one helper, `step_batch`.
2. Total = sum over runs of steps x FLOPs per step (per estimate).
3. Achieved FLOP/s. Our real dsbs training step at `bench/train_step.py`'s default setting
   (T5.1.1-small, batch 16, inputs 128, rationale 64, label 8, float32, `train_step.jax_step`)
   is timed for `--measure-steps` steps after a warm-up (median): its XLA FLOPs over its
   seconds. Device-hours = total FLOPs / achieved FLOP/s / 3600. The assumption: the grid's
   matmuls run at least as efficiently as small's at 16 x 128, so the figure is an upper
   bound on this machine's time. On a shared machine the step is slowed by whatever else
   runs: the result line says what the machine's load average was. `--achieved-gflops G`
   skips the measurement and uses G (say so when quoting it): on a GPU, where small's step
   says little about base's, take G from `bench/train_step.py --size base --no-torch` there.
4. `--assume-tflops T --assume-mfu M` adds device-hours at T x M FLOP/s (say 989 TFLOP/s, an
   H200's dense bfloat16, at 0.4): an assumption, labelled as one, never a measurement.

Evaluation is not in the total. Its share is estimated (unless `--no-eval`) as an upper
bound, padded in both estimates: every `EVAL_PERIOD` steps a run computes each task's
teacher-forced loss on the validation split and greedily decodes its label task there; at
the end it decodes validation and test again. Each is counted as XLA's FLOPs of
`Trainer.eval_step` (the teacher-forced forward pass) on batches of 64 at the full lengths,
the decoding as the label task's forward pass: the incremental decoder does the same
matmuls per target token, and does fewer when it cuts a batch's input padding or every row
has ended, and the trainer packs its validation losses, so this bounds it from above.
Split sizes: `EVAL_EXAMPLES` (the release's, validation held out of train as 10% where the
release has none).

`--dtype` is the activations' dtype of the compiled steps (float32 by default, the
measurement's; the paper's runs compute in bfloat16: the same matmuls, so the count should
barely move, not checked here). `--steps`, `--batch` and the lengths apply to every run.
The packed estimate imports TensorFlow, TFDS and SeqIO (to build and tokenize the data);
`--padded` alone imports neither, nor PyTorch. Compiling base takes a minute or more per
step on two cores.

`--model tiny` compiles a tiny model in place of the size's (a smoke test of the script).

    python bench/grid_cost.py [--grid gin/runs/paper/grid.json] [--size base] [--model M]
                              [--packed | --padded] [--manual_dir ../shared/datasets]
                              [--batch 64] [--inputs N] [--label N] [--rationale N]
                              [--cot N] [--steps 10000] [--dtype float32] [--no-eval]
                              [--measure-steps 3 | --achieved-gflops G]
                              [--assume-tflops 989 --assume-mfu 0.4]
"""

from __future__ import annotations

import argparse
import ast
import collections
import contextlib
import dataclasses
import importlib.util
import itertools
import math
import os
import pathlib
import re
import sys
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence

import jax
import numpy as np
from common import SIZES, log, time_in_turns
from memory import compile_step
from train_step import ALPHA, SCHEDULE_STEPS, Batch, jax_step, make_batch, task_features

from dsbs_jax import losses, optimizers, partitioning
from dsbs_jax.data import packing
from dsbs_jax.data.packing import RowShape
from dsbs_jax.trainer import Trainer

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_GRID = ROOT / "gin" / "runs" / "paper" / "grid.json"
DEFAULT_MANUAL_DIR = ROOT.parent / "shared" / "datasets"
# bench/train_step.py's defaults: the step whose FLOP/s this machine has been measured at.
MEASURE = {"size": "small", "batch": 16, "inputs": 128, "rationale": 64, "label": 8}
# dsbs-train's Evaluation.batch_size (not bound by the paper's gin files).
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
# The stand-in vocabulary: trained on these datasets' text, as the paper gin's lengths were
# measured (gin/runs/paper/dataset/*.gin).
VOCABULARY_DATASETS = ("cqa", "svamp", "esnli", "anli1")
VOCABULARY_PIECES = 8000
PACKED, PADDED = "packed", "padded"


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


def last_binding(values: Mapping[str, str], suffix: str, default: object) -> object:
    """The last binding of a parameter whose name ends with `suffix` (any scope), or `default`."""
    bound = [v for k, v in values.items() if k.endswith(suffix)]
    return ast.literal_eval(bound[-1]) if bound else default


@dataclasses.dataclass(frozen=True)
class Shape:
    """A run's settings that its padded training step's cost depends on."""

    mode: str
    batch: int
    lengths: tuple[tuple[str, int], ...]  # ('inputs', n) and each trained task's target
    remat: bool
    dropout: float


@dataclasses.dataclass(frozen=True)
class GridRun:
    dataset: str
    method: str
    shape: Shape
    tasks: tuple[str, str | None]  # LABEL_TASK, RATIONALE_TASK
    steps: int
    eval_period: int
    bindings: tuple[str, ...]  # the grid's other axes (TRAIN_FRACTION, SEED): one run each


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
        lengths = resolve(values, "TASK_FEATURE_LENGTHS")
        shape = Shape(
            mode=resolve(values, "MODE"),
            batch=resolve(values, "BATCH_SIZE"),
            lengths=tuple(sorted(lengths.items())),
            remat=last_binding(values, "T5Config.remat", False),
            dropout=last_binding(values, "T5Config.dropout_rate", 0.0),
        )
        axis = {
            kind: next(pathlib.Path(f).stem for f in run.gin_files if f"/{kind}/" in f"/{f}")
            for kind in ("dataset", "method")
        }
        tasks = (resolve(values, "LABEL_TASK"), resolve(values, "RATIONALE_TASK"))
        steps, period = resolve(values, "TRAIN_STEPS"), resolve(values, "EVAL_PERIOD")
        runs.append(
            GridRun(axis["dataset"], axis["method"], shape, tasks, steps, period, run.bindings)
        )
    return runs


@dataclasses.dataclass(frozen=True)
class Step:
    """One compiled step: its trainer's settings and each task's rows, packed or not."""

    mode: str
    remat: bool
    dropout: float
    packed: bool
    rows: tuple[tuple[str, RowShape], ...]  # (task, rows of that task's features)

    def describe(self) -> str:
        return ", ".join(
            f"{task} {s.rows} x (inputs {s.inputs}, targets {s.targets})" for task, s in self.rows
        )


def padded_step(shape: Shape, rows: int | None = None, tasks: Iterable[str] | None = None) -> Step:
    """The step of `rows` (default: the batch) examples padded to the shape's full lengths,
    for `tasks` (default: those the mode trains on)."""
    lengths = dict(shape.lengths)
    tasks = losses.task_weights(shape.mode, ALPHA) if tasks is None else tasks
    rows = shape.batch if rows is None else rows
    shapes = tuple((task, RowShape(rows, lengths["inputs"], lengths[task])) for task in tasks)
    return Step(shape.mode, shape.remat, shape.dropout, False, shapes)


def packed_step(shape: Shape, rows: Mapping[str, RowShape]) -> Step:
    return Step(shape.mode, shape.remat, shape.dropout, True, tuple(rows.items()))


def step_batch(step: Step) -> Batch:
    """Abstract features of the step's rows (`jax.ShapeDtypeStruct`s), each task's names and
    dtypes those its batches have: `packing.pack_rows`' when packed (segment ids and
    positions too), else unpacked `EncDecFeatureConverter` features (`train_step.
    task_features`, as `make_batch` builds them). `encoder_*` features are `[rows, inputs]`,
    `decoder_*` ones `[rows, targets]`."""
    if step.packed:
        template = packing.pack_rows([], RowShape(1, 1, 1))
    else:
        token = np.zeros((1, 1), np.int32)
        template = task_features(token, token)
    return {
        task: {
            name: jax.ShapeDtypeStruct(
                (s.rows, s.inputs if name.startswith("encoder_") else s.targets), x.dtype
            )
            for name, x in template.items()
        }
        for task, s in step.rows
    }


# -------------------------------------------------------------------------------------------
# Token lengths (TensorFlow, TFDS and SeqIO are imported here only)
# -------------------------------------------------------------------------------------------


def stand_in_vocabulary(manual_dir: pathlib.Path, directory: pathlib.Path) -> str:
    """An 8,000-piece SentencePiece model trained on every split's inputs and teacher
    outputs of the four datasets (`bench/data.py`'s stand-in, on all their text)."""
    from dsbs_jax.data import release, vocabulary

    texts = []
    for dataset in VOCABULARY_DATASETS:
        for examples in release.read_dataset(manual_dir, dataset).values():
            texts += [e.input for e in examples] + [e.teacher_output for e in examples]
    path = directory / "spm.model"
    path.write_bytes(vocabulary.train_sentencepiece(texts, vocab_size=VOCABULARY_PIECES))
    return str(path)


def scan_split(
    by_task: Mapping[str, tuple[str, Mapping[str, int]]], split: str, parsed_task: str
) -> dict[str, np.ndarray]:
    """`training_split.check_lengths`' `[n, 2]` (inputs, targets) token lengths per task,
    from `split`: check_lengths itself for the training split (truncation allowed:
    `plan_rows` clips to the caps, as the trainer would), the same scan of another split
    otherwise, over the examples whose teacher output parsed (those of `parsed_task`, a
    rationale task), as the training split's source keeps only those: so every task scans
    the same examples."""
    import seqio

    from dsbs_jax.data import training_split

    if split == training_split.TRAIN:
        return training_split.check_lengths(by_task, allow_truncation=True)

    def examples(name: str) -> Iterator[dict]:
        task = seqio.get_mixture_or_task(name)
        return task.get_dataset(None, split=split, shuffle=False, num_epochs=1).as_numpy_iterator()

    parsed = {example["id"] for example in examples(parsed_task)}
    scanned = {}
    for task, (name, _) in by_task.items():
        kept = (e for e in examples(name) if e["id"] in parsed)
        lengths = [
            (len(e["inputs"]), len(e["targets"]))
            for e in itertools.islice(kept, training_split.LENGTH_SCAN_EXAMPLES)
        ]
        if not lengths:
            raise SystemExit(f"task {name!r} has no {split} examples with a parsed teacher output")
        scanned[task] = np.array(lengths, np.int64)
    return scanned


def packed_rows(
    runs: Sequence[GridRun], manual_dir: pathlib.Path
) -> tuple[dict[GridRun, dict[str, RowShape]], dict[str, str]]:
    """Each run's packed rows per step as `dsbs-train` would size them (module docstring),
    and the split each dataset's token lengths were scanned in."""
    import seqio

    import tasks
    from dsbs_jax import run_tasks
    from dsbs_jax.data import training_split
    from dsbs_jax.programs import prepare
    from tasks.naming import task_name

    datasets = sorted({run.dataset for run in runs})
    rows, splits, plans = {}, {}, {}
    with tempfile.TemporaryDirectory() as directory:
        directory = pathlib.Path(directory)
        log(f"building {', '.join(datasets)} from {manual_dir} and a stand-in vocabulary")
        with contextlib.redirect_stdout(sys.stderr):  # TFDS prints its progress to stdout
            for dataset in datasets:
                prepare.build(dataset, manual_dir, directory / "tfds")
        vocabulary = stand_in_vocabulary(manual_dir, directory)
        tasks.register(data_dir=str(directory / "tfds"), vocabulary_path=vocabulary, only=datasets)
        for run in runs:
            label, rationale = run.tasks
            by_task = run_tasks.task_lengths(
                run.shape.mode, label, rationale, dict(run.shape.lengths)
            )
            split = splits.setdefault(
                run.dataset,
                training_split.TRAIN
                if training_split.TRAIN in seqio.get_mixture_or_task(label).splits
                else "validation",
            )
            key = (
                run.shape.batch,
                split,
                tuple((task, name, tuple(n.items())) for task, (name, n) in by_task.items()),
            )
            if key not in plans:
                scanned = scan_split(by_task, split, task_name(run.dataset, "rationale"))
                plans[key] = training_split.plan_packing(
                    by_task, scanned, run.shape.batch, 1, seed=0
                )
                longest = ", ".join(
                    f"{task} {tuple(int(v) for v in scanned[task].max(axis=0))} of "
                    f"{len(scanned[task])}"
                    for task in by_task
                )
                log(
                    f"{run.dataset} {run.method} ({split}, longest (inputs, targets) {longest}): "
                    + training_split.describe_packing(plans[key], by_task, run.shape.batch, 1)
                )
            rows[run] = plans[key]
    return rows, splits


# -------------------------------------------------------------------------------------------
# FLOPs
# -------------------------------------------------------------------------------------------


def xla_flops(compiled: jax.stages.Compiled) -> float:
    """FLOPs of a compiled program by XLA's cost analysis (as `Trainer.flops_per_step`)."""
    analysis = compiled.cost_analysis()
    analysis = analysis[0] if isinstance(analysis, list) else analysis
    if not analysis or "flops" not in analysis:
        raise RuntimeError(f"XLA gives no FLOP count on {jax.devices()[0].platform}")
    return float(analysis["flops"])


class StepCosts:
    """FLOPs of the training and evaluation steps of a model size, compiled once per step."""

    def __init__(self, size: str, dtype: str):
        self.size, self.dtype = size, dtype
        self.mesh = partitioning.make_mesh()
        self._train: dict[Step, float] = {}
        self._eval: dict[Step, float] = {}

    def trainer(self, step: Step) -> Trainer:
        config = dataclasses.replace(
            SIZES[self.size], dtype=self.dtype, remat=step.remat, dropout_rate=step.dropout
        )
        weights = losses.task_weights(step.mode, ALPHA)
        return Trainer(config, optimizers.adamw(SCHEDULE_STEPS), self.mesh, weights)

    def train(self, step: Step) -> float:
        if step not in self._train:
            kind = PACKED if step.packed else PADDED
            log(f"compiling the {self.size} {step.mode} step, {kind}: {step.describe()}")
            compiled = compile_step(self.trainer(step), step_batch(step))
            self._train[step] = xla_flops(compiled) * jax.device_count()
            log(f"  {self._train[step] / 1e12:.3f} TFLOP/step")
        return self._train[step]

    def eval_step(self, step: Step) -> float:
        """FLOPs of `Trainer.eval_step` on the step's (padded) rows."""
        if step not in self._eval:
            trainer = self.trainer(step)
            params = partitioning.abstract_arrays(
                trainer.abstract_state.params, trainer.params_sharding
            )
            batch = step_batch(step)
            arrays = partitioning.abstract_arrays(batch, partitioning.batch_sharding(self.mesh))
            with trainer.scope():
                compiled = trainer.eval_step.lower(params, arrays).compile()
            self._eval[step] = xla_flops(compiled) * jax.device_count()
        return self._eval[step]

    def eval_per_run(self, run: GridRun) -> float | None:
        """Upper bound of one run's evaluation FLOPs (module docstring); None for a dataset
        of unknown split sizes."""
        if run.dataset not in EVAL_EXAMPLES:
            return None
        loss = self.eval_step(padded_step(run.shape, EVAL_BATCH))
        decode = self.eval_step(padded_step(run.shape, EVAL_BATCH, (losses.LABEL,)))
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


def mean_per_step(runs: Iterable[GridRun], flops: Mapping[GridRun, float]) -> float:
    """FLOPs per step averaged over `runs`, weighted by their steps."""
    runs = list(runs)
    return sum(run.steps * flops[run] for run in runs) / sum(run.steps for run in runs)


def dataset_lengths(runs: Iterable[GridRun]) -> str:
    """A dataset's feature lengths as its runs use them: inputs, and each target's."""
    lengths = {}
    for run in runs:
        for name, value in run.shape.lengths:
            lengths["cot" if run.shape.mode == "cot" and name == losses.LABEL else name] = value
    return " ".join(f"{name} {value}" for name, value in lengths.items())


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--grid", type=pathlib.Path, default=DEFAULT_GRID)
    parser.add_argument("--size", default="base", help="the grid's size axis value")
    parser.add_argument(
        "--model", choices=sorted(SIZES), help="compile this model instead (tiny: a smoke test)"
    )
    only = parser.add_mutually_exclusive_group()
    only.add_argument("--packed", action="store_true", help="the packed estimate alone")
    only.add_argument(
        "--padded",
        action="store_true",
        help="the padded estimate alone (every example at the full lengths; no data needed)",
    )
    parser.add_argument(
        "--manual_dir",
        type=pathlib.Path,
        default=DEFAULT_MANUAL_DIR,
        help="the paper's release, for the packed estimate's token lengths",
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
    estimates = [PACKED] if args.packed else [PADDED] if args.padded else [PACKED, PADDED]
    modes = collections.Counter(run.shape.mode for run in runs)
    datasets = list(dict.fromkeys(run.dataset for run in runs))
    log(f"{len(runs)} runs of size {args.size}: " + ", ".join(f"{m} {n}" for m, n in modes.items()))

    steps: dict[str, dict[GridRun, Step]] = {}
    splits: dict[str, str] = {}
    if PACKED in estimates:
        rows, splits = packed_rows(runs, args.manual_dir)
        steps[PACKED] = {run: packed_step(run.shape, rows[run]) for run in runs}
    if PADDED in estimates:
        steps[PADDED] = {run: padded_step(run.shape) for run in runs}

    costs = StepCosts(model, args.dtype)
    flops = {
        kind: {run: costs.train(step) for run, step in by_run.items()}
        for kind, by_run in steps.items()
    }
    totals = {kind: sum(run.steps * by_run[run] for run in runs) for kind, by_run in flops.items()}
    compiled = {kind: len(set(by_run.values())) for kind, by_run in steps.items()}

    def of(dataset: str | None = None, mode: str | None = None) -> list[GridRun]:
        return [r for r in runs if dataset in (None, r.dataset) and mode in (None, r.shape.mode)]

    def per_step(selected: Iterable[GridRun]) -> str:
        selected = list(selected)
        return " / ".join(
            f"{mean_per_step(selected, flops[kind]) / 1e12:.2f}" for kind in estimates
        )

    kinds = " / ".join(estimates)
    batch = "/".join(sorted({f"{run.shape.batch}" for run in runs}))
    parts = [
        f"grid cost {os.path.relpath(args.grid, ROOT)} size={args.size} "
        + (f"model={model} " if model != args.size else "")
        + f"dtype={args.dtype} dropout="
        + "/".join(sorted({f"{run.shape.dropout:g}" for run in runs})),
        "runs "
        + ", ".join(f"{mode} {n}" for mode, n in modes.items())
        + f" ({len(runs)}) x "
        + "/".join(sorted({f"{run.steps}" for run in runs}))
        + f" steps of {batch} examples"
        + (" (packed: on average)" if PACKED in estimates else ""),
    ]
    if PACKED in estimates:
        stand_ins = any(split != "train" for split in splits.values())
        parts.append(
            "packed rows from the token lengths of the first 2,000 examples of "
            + ", ".join(f"{dataset} {splits[dataset]}" for dataset in datasets)
            + f" (a stand-in {VOCABULARY_PIECES}-piece vocabulary"
            + ("; validation: no train split here, its lengths stand in" if stand_ins else "")
            + ")"
        )
    parts.append(
        f"TFLOP/step {kinds} (XLA cost_analysis, a mode's mean over its runs; "
        + ", ".join(f"{kind} {n} steps compiled" for kind, n in compiled.items())
        + "): "
        + ", ".join(f"{mode} {per_step(of(mode=mode))}" for mode in modes)
    )
    parts.append(
        f"by dataset, TFLOP/step {kinds}: "
        + "; ".join(
            f"{dataset} ({dataset_lengths(of(dataset=dataset))}) "
            + ", ".join(f"{mode} {per_step(of(dataset=dataset, mode=mode))}" for mode in modes)
            for dataset in datasets
        )
    )
    total_text = ", ".join(
        f"{kind} {engineering(total)} ({total:.3g} FLOP)" for kind, total in totals.items()
    )
    if len(totals) == 2:
        total_text += f": packed = {totals[PACKED] / totals[PADDED]:.3f} x padded"
    parts.append(f"training total {total_text}")

    if not args.no_eval:
        log("compiling the evaluation steps (teacher-forced forward passes, padded)")
        evals = [costs.eval_per_run(run) for run in runs]
        known = [e for e in evals if e is not None]
        unknown = len(evals) - len(known)
        parts.append(
            f"evaluation (excluded, upper bound) {engineering(sum(known))} = "
            + ", ".join(f"{sum(known) / total:.1%} of {kind}" for kind, total in totals.items())
            + " training"
            + (f", {unknown} runs of unknown split sizes not counted" if unknown else "")
        )

    if args.achieved_gflops:
        gflops, note = args.achieved_gflops, f"given {args.achieved_gflops:g} GFLOP/s"
    else:
        gflops, note = measure_gflops(args.measure_steps)
    platform = jax.devices()[0].platform
    parts.append(note)
    parts.append(
        f"this {platform} (training): "
        + ", ".join(f"{kind} {duration(t / (gflops * 1e9))}" for kind, t in totals.items())
    )
    if args.assume_tflops:
        rate = args.assume_tflops * 1e12 * args.assume_mfu
        parts.append(
            f"ASSUMED, not measured: {args.assume_tflops:g} TFLOP/s x {args.assume_mfu:.0%} MFU "
            f"= {rate / 1e12:.0f} TFLOP/s per device: "
            + ", ".join(f"{kind} {duration(t / rate)}" for kind, t in totals.items())
        )
    print(" | ".join(parts))


if __name__ == "__main__":
    main()
