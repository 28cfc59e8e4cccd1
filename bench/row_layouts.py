"""Packed training rows on CQA: how far from the examples' own tokens, and would one set of
rows for both tasks do better.

`dsbs-train` packs a step's examples into two sets of rows, the label task's and the
rationale task's (`packing.plan_rows`; a step is a prefix of the stream, ending at the first
example that no longer fits). The other layout: both tasks' segments of each example in one
set of rows, so one forward pass per step and one set of half-empty row ends instead of two.
On CQA's training examples (the paper grid's lengths, `data.py`'s stand-in vocabulary), per
example a step holds on average, this prints each layout's token positions, XLA's FLOPs of
the compiled training step (T5.1.1-small, dropout 0.1, AdamW) and its measured step time.

The combined rows are sized as `plan_rows` sizes a task's (its inputs and targets lengths
grown by `packing.ROUND_TO`, whichever adds more examples, until a step holds `--batch` on
average), for several row counts. Their step is compiled and timed as one task over those
rows: the same model over the same shapes; the per-task loss split such a step would need
costs no matmul and is not built.

    python bench/row_layouts.py [--batch 16] [--rows 3 4 5 6] [--steps 3]
"""

import argparse
import dataclasses
import itertools
import math
import pathlib
import statistics
import tempfile
import time
from collections.abc import Iterator, Sequence

import jax
import numpy as np
from common import SIZES, log
from validation import cqa_sides

from dsbs_jax import losses, optimizers, partitioning
from dsbs_jax.data import packing, training_split
from dsbs_jax.trainer import Trainer

ROOT = pathlib.Path(__file__).resolve().parents[1]
SIDES = (losses.LABEL, losses.RATIONALE)
DROPOUT = 0.1  # the paper grid's
STEPS_SIZED = 64  # steps packed to measure a layout's mean examples per step


@dataclasses.dataclass(frozen=True)
class Layout:
    name: str
    shapes: dict[str, packing.RowShape]  # task -> rows ("both" for the combined layout)
    examples: float  # per step, on average
    batch: dict  # one step's packed features, for compiling and timing


def blank_examples(scanned: dict[str, np.ndarray], seed: int) -> Iterator[dict[str, dict]]:
    """Each scanned example as `{task: {inputs, targets}}` of its lengths, random token ids,
    in a seeded shuffled order, repeated."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(scanned[SIDES[0]]))
    while True:
        for i in order:
            yield {
                task: {
                    name: rng.integers(2, 8000, length).astype(np.int32)
                    for name, length in zip((packing.INPUTS, packing.TARGETS), x[i], strict=True)
                }
                for task, x in scanned.items()
            }


def combined_steps(examples: Iterator[dict], shape: packing.RowShape) -> Iterator[tuple[list, int]]:
    """Per step, the `(row, segment)` placements and the example count: each example's label
    and rationale segments placed first-fit in one set of rows, the step ending at the first
    example whose segments do not both fit."""
    pending, limits = None, np.array([shape.inputs, shape.targets])
    while True:
        used = np.zeros((shape.rows, 2), np.int64)
        placed, count = [], 0
        while True:
            pending = pending or next(examples)
            trial, rows = used.copy(), []
            for task in SIDES:
                size = np.array([len(pending[task][n]) for n in (packing.INPUTS, packing.TARGETS)])
                fits = np.flatnonzero(np.all(trial + size <= limits, axis=1))
                if not len(fits):
                    break
                trial[fits[0]] += size
                rows.append((int(fits[0]), pending[task]))
            if len(rows) < len(SIDES):
                break
            used, pending = trial, None
            placed += rows
            count += 1
        if count == 0:
            raise ValueError(f"an example fits no combined row of {shape}")
        yield placed, count


def mean_count(steps: Iterator[tuple[object, int]]) -> float:
    return float(np.mean([count for _, count in itertools.islice(steps, STEPS_SIZED)]))


def combined_layout(scanned: dict[str, np.ndarray], rows: int, examples: int) -> Layout:
    """One set of `rows` rows for both tasks, sized as `plan_rows` sizes a task's."""
    inputs = sum(scanned[task][:, 0].mean() for task in SIDES)
    targets = sum(scanned[task][:, 1].mean() for task in SIDES)
    step = packing.ROUND_TO
    sizes = [step * math.ceil(examples * mean / rows / step) for mean in (inputs, targets)]

    def held(sizes: Sequence[int]) -> float:
        shape = packing.RowShape(rows, *sizes)
        return mean_count(combined_steps(blank_examples(scanned, 0), shape))

    count = held(sizes)
    while count < examples:
        trials = [[s + step * (axis == a) for a, s in enumerate(sizes)] for axis in (0, 1)]
        gains = [held(trial) for trial in trials]
        sizes, count = trials[int(np.argmax(gains))], max(gains)
    shape = packing.RowShape(rows, *sizes)
    placed, _ = next(combined_steps(blank_examples(scanned, 1), shape))
    return Layout(
        f"combined, {rows} rows", {"both": shape}, count, {"both": packing.pack_rows(placed, shape)}
    )


def planned_layout(
    sides: training_split.Tasks, scanned: dict[str, np.ndarray], examples: int
) -> Layout:
    """What `dsbs-train` runs: each task's rows as `training_split.plan_packing` sizes them."""
    shapes = training_split.plan_packing(sides, scanned, examples, 1, 0)
    count = mean_count(packing.pack_steps(blank_examples(scanned, 0), shapes))
    batch, _ = next(packing.pack_steps(blank_examples(scanned, 1), shapes))
    return Layout("planned (dsbs-train)", shapes, count, batch)


def measure(layout: Layout, steps: int) -> tuple[float, float]:
    """XLA's FLOPs and the median time of the layout's training step (after compiling)."""
    config = dataclasses.replace(SIZES["small"], dropout_rate=DROPOUT)
    weights = {task: 1.0 / len(layout.shapes) for task in layout.shapes}
    trainer = Trainer(config, optimizers.adamw(10_000), partitioning.make_mesh(), weights)
    state = trainer.create_state(seed=0)
    batch = partitioning.global_batch(trainer.mesh, layout.batch)
    flops = trainer.flops_per_step(state, batch)
    seconds = []
    for _ in range(steps + 1):  # the first compiles
        start = time.perf_counter()
        state, _ = jax.block_until_ready(trainer.run_train_step(state, batch))
        seconds.append(time.perf_counter() - start)
    return flops, statistics.median(seconds[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=16, help="examples per step, on average")
    parser.add_argument("--rows", type=int, nargs="+", default=[3, 4, 5, 6], help="combined")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per layout")
    parser.add_argument("--manual_dir", type=pathlib.Path, default=ROOT.parent / "shared/datasets")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        lengths, sides, scanned = cqa_sides(args.manual_dir, pathlib.Path(directory))
    own = sum(scanned[task].mean(0).sum() for task in SIDES)
    layouts = [planned_layout(sides, scanned, args.batch)]
    layouts += [combined_layout(scanned, rows, args.batch) for rows in args.rows]
    parts = []
    for layout in layouts:
        log(f"{layout.name}: {layout.shapes}, {layout.examples:.2f} examples/step; timing")
        flops, seconds = measure(layout, args.steps)
        positions = sum(shape.positions() for shape in layout.shapes.values())
        rows = ", ".join(
            f"{t} {s.rows}x({s.inputs}, {s.targets})" for t, s in layout.shapes.items()
        )
        parts.append(
            f"{layout.name} [{rows}]: {layout.examples:.2f} examples/step, "
            f"{positions / layout.examples:.1f} positions, "
            f"{flops / layout.examples / 1e9:.2f} GFLOP, "
            f"{seconds / layout.examples * 1e3:.0f} ms per example"
        )
    print(
        f"row layouts cqa batch={args.batch} lengths={lengths} size=small dropout={DROPOUT} | "
        f"own tokens {own:.1f} per example | " + " | ".join(parts)
    )


if __name__ == "__main__":
    main()
