"""Packing examples into fixed-shape rows, T5X style, with the paired rule.

A packed row holds several whole examples one after another, each a *segment*: its tokens,
segment ids (1, 2, ... within the row; 0 is padding) and positions (0, 1, ... within the
segment), as SeqIO's `EncDecFeatureConverter(pack=True)` lays them out, so that attention
never crosses examples and each target token's loss is that of the example alone.

A step packs examples in stream order, each into the first row with room for both its
inputs and its targets, until the next example fits nowhere (or `max_examples` are in):
that example opens the next step. So a step holds a *prefix* of the remaining stream, and
a position in the stream is one number, the examples consumed. In paired mode every
task's rows take the same examples: an example goes in only if it fits every task.

`plan_rows` sizes the rows from the training split's own token lengths so that a step
holds `examples` examples on average. Numpy only: no TensorFlow here.
"""

import dataclasses
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence

import numpy as np

INPUTS, TARGETS = "inputs", "targets"
# Features that travel with each target token (an offline teacher's top-k), packed along
# the decoder positions: any extra feature of an example whose first axis is the targets'.
PACKED_FEATURES = (
    "encoder_input_tokens",
    "encoder_segment_ids",
    "encoder_positions",
    "decoder_target_tokens",
    "decoder_input_tokens",
    "decoder_segment_ids",
    "decoder_positions",
    "decoder_loss_weights",
)
# The rows an input row is aimed at when sizing: long enough that a row holds several
# examples (little space lost at row ends), short enough that attention over the whole
# row stays a small part of the cost.
TARGET_ROW_LENGTH = 256
ROUND_TO = 8


@dataclasses.dataclass(frozen=True)
class RowShape:
    """A task's packed rows per step: how many, and their inputs and targets lengths."""

    rows: int
    inputs: int
    targets: int

    def positions(self) -> int:
        """Token positions one step computes for this task (encoder plus decoder)."""
        return self.rows * (self.inputs + self.targets)


Example = Mapping[str, np.ndarray]


class RowPacker:
    """One task's rows for one step, filled first-fit."""

    def __init__(self, shape: RowShape):
        self.shape = shape
        self.examples: list[tuple[int, Example]] = []  # (row, example) in order
        self.used = [[0, 0] for _ in range(shape.rows)]

    def row_for(self, example: Example) -> int | None:
        """The first row with room for the example's inputs and targets, or None."""
        size = (len(example[INPUTS]), len(example[TARGETS]))
        limits = (self.shape.inputs, self.shape.targets)
        for row, used in enumerate(self.used):
            if all(u + s <= limit for u, s, limit in zip(used, size, limits, strict=True)):
                return row
        return None

    def add(self, row: int, example: Example) -> None:
        self.used[row][0] += len(example[INPUTS])
        self.used[row][1] += len(example[TARGETS])
        self.examples.append((row, example))

    def features(self) -> dict[str, np.ndarray]:
        """The rows as `EncDecFeatureConverter(pack=True)` features (plus the extra
        per-target-token features of the examples, packed along the decoder)."""
        return pack_rows(self.examples, self.shape)


def pack_rows(placed: Sequence[tuple[int, Example]], shape: RowShape) -> dict[str, np.ndarray]:
    """`(row, example)` pairs as packed features of `shape`: each example appended to its
    row as the next segment."""
    rows, n_in, n_out = shape.rows, shape.inputs, shape.targets
    out = {
        name: np.zeros(
            (rows, n_in if name.startswith("encoder") else n_out),
            np.float32 if name == "decoder_loss_weights" else np.int32,
        )
        for name in PACKED_FEATURES
    }
    extras = sorted({name for _, ex in placed for name in ex} - {INPUTS, TARGETS})
    for name in extras:
        first = next(ex[name] for _, ex in placed if name in ex)
        out[name] = np.zeros((rows, n_out, *first.shape[1:]), first.dtype)
    ends = np.zeros((rows, 2), np.int64)
    segments = np.zeros(rows, np.int32)
    for row, example in placed:
        inputs, targets = example[INPUTS], example[TARGETS]
        segments[row] += 1
        (i, t), segment = ends[row], segments[row]
        a, b = i + len(inputs), t + len(targets)
        out["encoder_input_tokens"][row, i:a] = inputs
        out["encoder_segment_ids"][row, i:a] = segment
        out["encoder_positions"][row, i:a] = np.arange(len(inputs))
        out["decoder_target_tokens"][row, t:b] = targets
        out["decoder_input_tokens"][row, t + 1 : b] = targets[:-1]
        out["decoder_segment_ids"][row, t:b] = segment
        out["decoder_positions"][row, t:b] = np.arange(len(targets))
        out["decoder_loss_weights"][row, t:b] = targets > 0
        for name in extras:
            out[name][row, t:b] = example[name][: len(targets)]
        ends[row] = a, b
    return out


class ExampleTooLong(ValueError):
    """An example longer than a packed row: it could never be placed."""


def pack_steps(
    examples: Iterable[Mapping[str, Example]],
    shapes: Mapping[str, RowShape],
    max_examples: int | None = None,
) -> Iterator[tuple[dict[str, dict[str, np.ndarray]], int]]:
    """Per step `({task: packed features}, examples in the step)` from a stream of
    `{task: example}` (the same example seen by each task), each task's rows shaped by
    `shapes`. A step takes examples in order while each fits every task's rows (and fewer
    than `max_examples` are in); the first that does not opens the next step. The stream's
    last, partial step is yielded too."""
    for packers, count in _fill_steps(examples, shapes, max_examples):
        yield {task: packer.features() for task, packer in packers.items()}, count


def _fill_steps(
    examples: Iterable[Mapping[str, Example]],
    shapes: Mapping[str, RowShape],
    max_examples: int | None = None,
) -> Iterator[tuple[dict[str, RowPacker], int]]:
    """`pack_steps`' placement alone: each step's filled packers and its example count."""
    pending = None
    iterator = iter(examples)
    while True:
        packers = {task: RowPacker(shape) for task, shape in shapes.items()}
        count = 0
        while max_examples is None or count < max_examples:
            if pending is None:
                pending = next(iterator, None)
                if pending is None:
                    break
            rows = {task: packers[task].row_for(pending[task]) for task in packers}
            if any(row is None for row in rows.values()):
                if count == 0:
                    raise ExampleTooLong(_too_long(pending, shapes))
                break
            for task, row in rows.items():
                packers[task].add(row, pending[task])
            count, pending = count + 1, None
        if count == 0:
            return
        yield packers, count


def _too_long(example: Mapping[str, Example], shapes: Mapping[str, RowShape]) -> str:
    sizes = {task: (len(ex[INPUTS]), len(ex[TARGETS])) for task, ex in example.items()}
    rows = {task: (shape.inputs, shape.targets) for task, shape in shapes.items()}
    return f"an example of (inputs, targets) lengths {sizes} fits no packed row of {rows}"


# -------------------------------------------------------------------------------------------
# Sizing
# -------------------------------------------------------------------------------------------


def _round_up(value: float, multiple: int = ROUND_TO) -> int:
    return max(multiple, math.ceil(value / multiple) * multiple)


def plan_rows(
    lengths: Mapping[str, np.ndarray],
    caps: Mapping[str, tuple[int, int]],
    examples: int,
    row_multiple: int = 1,
    seed: int = 0,
) -> dict[str, RowShape]:
    """Each task's `RowShape` for steps of `examples` examples on average.

    `lengths[task]` is `[n, 2]`, the (inputs, targets) token lengths of the same `n`
    training examples for every task; `caps[task]` the longest (inputs, targets) an
    example may have (the feature lengths), which every row can hold. The rows per step,
    a multiple of `row_multiple`, aim the input rows at `TARGET_ROW_LENGTH` tokens. Each
    length starts at its share of the examples' mean tokens; then, as long as steps packed
    from these examples (in a seeded shuffled order) hold fewer than `examples` on average,
    the length whose growth by `ROUND_TO` adds the most examples per step grows: where the
    rows run out first, not everywhere."""
    counts = {task: len(x) for task, x in lengths.items()}
    if len(set(counts.values())) != 1:
        raise ValueError(f"paired tasks must have the same examples, got counts {counts}")
    first = next(iter(lengths))
    mean_inputs = float(np.mean(lengths[first][:, 0]))
    row_length = max(TARGET_ROW_LENGTH, caps[first][0])
    rows = max(1, round(examples * mean_inputs / row_length / row_multiple)) * row_multiple
    clipped = {task: np.minimum(x, caps[task]) for task, x in lengths.items()}
    # (task, 0) is a task's inputs length, (task, 1) its targets', never below the cap.
    sizes = {
        (task, axis): max(caps[task][axis], _round_up(examples * x[:, axis].mean() / rows))
        for task, x in clipped.items()
        for axis in (0, 1)
    }

    def shapes(sizes: Mapping[tuple[str, int], int]) -> dict[str, RowShape]:
        return {task: RowShape(rows, sizes[task, 0], sizes[task, 1]) for task in lengths}

    order = np.random.default_rng(seed).permutation(len(lengths[first]))

    def fill(sizes) -> float:
        return mean_examples(lengths, caps, shapes(sizes), order, examples)

    held = fill(sizes)
    while held < examples:
        grown = {key: {**sizes, key: sizes[key] + ROUND_TO} for key in sizes}
        gains = {key: fill(trial) for key, trial in grown.items()}
        best = max(gains, key=gains.get)
        if gains[best] > held:
            sizes, held = grown[best], gains[best]
        else:  # no one length is the limit: grow them all
            sizes = {key: size + ROUND_TO for key, size in sizes.items()}
            held = fill(sizes)
    return shapes(sizes)


def mean_examples(
    lengths: Mapping[str, np.ndarray],
    caps: Mapping[str, tuple[int, int]],
    shapes: Mapping[str, RowShape],
    order: np.ndarray,
    examples: int,
    steps: int = 64,
) -> float:
    """The mean examples per step of `pack_steps` over `steps` steps of `order`'s examples
    (repeated as needed), from their lengths alone."""
    order = np.resize(order, max(steps * examples * 2, len(order)))
    clipped = {task: np.minimum(x, caps[task]) for task, x in lengths.items()}
    stream = (
        {task: {INPUTS: _blank(x[i, 0]), TARGETS: _blank(x[i, 1])} for task, x in clipped.items()}
        for i in order
    )
    counts = []
    for _, count in _fill_steps(stream, shapes):
        counts.append(count)
        if len(counts) == steps:
            break
    return float(np.mean(counts))


def _blank(length: int) -> np.ndarray:
    """A stand-in sequence of `length` tokens: sizing needs lengths only."""
    return np.empty(int(length), np.int8)
