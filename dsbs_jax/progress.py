"""What a long run shows while it works: a progress line, and its throughput figures."""

import collections
import contextlib
import sys
import time
from collections.abc import Callable, Iterator

# Peak dense bfloat16 FLOP/s per device, by `jax.Device.device_kind`, for MFU. Devices not
# listed (CPUs) get MFU only when `peak_flops_per_device` is given.
PEAK_FLOPS = {
    "NVIDIA H100 80GB HBM3": 989e12,
    "NVIDIA H200": 989e12,
    "NVIDIA A100-SXM4-80GB": 312e12,
    "NVIDIA A100-SXM4-40GB": 312e12,
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5": 459e12,
    "TPU v6 lite": 918e12,
}


PERIOD = 10.0  # seconds between two progress lines of a `Counter`


def duration(seconds: float) -> str:
    """H:MM:SS."""
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class Progress:
    """The training loop's progress: one line per `period` seconds with step, loss, and
    steps/s, examples/s and ETA over the last `window` seconds of training.

    Honest about time: the first step of a process (compilation) is reported on its own
    and counts in no rate, evaluations are timed apart from steps, and the ETA is the steps
    left at the recent rate plus the evaluations left at the last one's duration.
    """

    def __init__(
        self,
        total_steps: int,
        eval_period: int | None = None,
        period: float = 10.0,
        window: float = 60.0,
        stream=None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.total, self.eval_period = total_steps, eval_period
        self.period, self.window = period, window
        self.stream, self.time = stream or sys.stderr, clock
        self.start_time = clock()
        self.last_print = 0.0
        self.recent: collections.deque[tuple[int, float]] = collections.deque()
        self.paused = 0.0  # seconds spent evaluating, kept out of the step rate
        self.eval_seconds: float | None = None
        self.first_done: tuple[int, float] | None = None  # (step, clock) of the first step
        self.last_done: tuple[int, float] | None = None

    def compiling(self) -> None:
        """Say that the first step is compiling (before it is dispatched)."""
        self.start_time = self.time()
        print("compiling the train step...", file=self.stream, flush=True)

    def _clock(self) -> float:
        return self.time() - self.paused

    def rate(self) -> float:
        """Steps per second over the recent window; 0 until a second step is done."""
        if len(self.recent) < 2:
            return 0.0
        (step0, time0), (step1, time1) = self.recent[0], self.recent[-1]
        return (step1 - step0) / (time1 - time0) if time1 > time0 else 0.0

    def eta(self, step: int) -> float | None:
        """Seconds left: steps at the recent rate, evaluations at the last one's duration."""
        rate = self.rate()
        if not rate:
            return None
        evals = 0
        if self.eval_period:
            evals = self.total // self.eval_period - step // self.eval_period
            evals += self.total % self.eval_period != 0  # the last step evaluates too
        return (self.total - step) / rate + evals * (self.eval_seconds or 0.0)

    def steps_per_second(self) -> float | None:
        """This process's mean rate after its first step; None before a second step."""
        if self.first_done is None or self.last_done[0] == self.first_done[0]:
            return None
        (step0, time0), (step1, time1) = self.first_done, self.last_done
        return (step1 - step0) / max(time1 - time0, 1e-9)

    def update(self, step: int, loss: float, examples_per_step: float, force: bool = False) -> None:
        """Step `step` is done (its metrics read)."""
        now = self._clock()
        if self.first_done is None:
            seconds = self.time() - self.start_time
            print(f"compiled and ran step {step} in {seconds:.1f} s", file=self.stream, flush=True)
            self.last_print, self.first_done = now, (step, now)
        self.last_done = (step, now)
        self.recent.append((step, now))
        while len(self.recent) > 2 and now - self.recent[1][1] > self.window:
            self.recent.popleft()
        if not force and now - self.last_print < self.period:
            return
        self.last_print = now
        rate, eta = self.rate(), self.eta(step)
        line = (
            f"step {step}/{self.total} ({step / self.total:.0%})  loss {loss:.4f}  "
            f"{rate:.2f} steps/s  {rate * examples_per_step:.1f} examples/s  "
            f"ETA {'?' if eta is None else duration(eta)}"
        )
        print(line, file=self.stream, flush=True)

    @contextlib.contextmanager
    def evaluating(self) -> Iterator[None]:
        """Time an evaluation: out of the step rate, into the ETA's evaluations."""
        start = self.time()
        yield
        self.eval_seconds = self.time() - start
        self.paused += self.eval_seconds

    def note(self, step: int, kind: str, figures: dict[str, float]) -> None:
        """A one-line report, e.g. of an evaluation."""
        text = ", ".join(f"{name} {value:.4g}" for name, value in sorted(figures.items()))
        print(f"step {step} {kind}: {text}", file=self.stream, flush=True)


class Throughput:
    """Examples/s, tokens/s, examples per step, token positions computed per example and
    model FLOPs utilisation of the steps between two reads; and the mean examples per step
    of all steps added."""

    def __init__(self, flops_per_step: float | None, peak_flops: float | None):
        self.flops_per_step, self.peak_flops = flops_per_step, peak_flops
        self.time = time.monotonic()
        self.steps = self.examples = self.tokens = self.positions = 0
        self.total_steps = self.total_examples = 0

    def add(self, examples: int, tokens: int, positions: int) -> None:
        """One step: its examples, real tokens and token positions (padding included)."""
        self.steps += 1
        self.examples += examples
        self.tokens += tokens
        self.positions += positions
        self.total_steps += 1
        self.total_examples += examples

    @property
    def mean_examples(self) -> float:
        return self.total_examples / max(self.total_steps, 1)

    def read(self) -> dict[str, float]:
        """Figures since the last read, then start counting afresh."""
        now = time.monotonic()
        elapsed = max(now - self.time, 1e-9)
        figures = {
            "examples_per_second": self.examples / elapsed,
            "tokens_per_second": self.tokens / elapsed,
            "examples_per_step": self.examples / max(self.steps, 1),
            "positions_per_example": self.positions / max(self.examples, 1),
        }
        if self.flops_per_step and self.peak_flops:
            figures["mfu"] = self.steps * self.flops_per_step / elapsed / self.peak_flops
        self.time = now
        self.steps = self.examples = self.tokens = self.positions = 0
        return figures


class Counter:
    """One line per `period` seconds (PERIOD; and when forced) for a job of `total` items:
    [label: ] done/total, percent, items/s, ETA, then any `extra` figures (`skipped=3`).

    `initial` items were done before this process started (a resumed job); the rate and
    ETA count only this process's own work.
    """

    def __init__(
        self,
        total: int,
        unit: str = "examples",
        period: float | None = None,
        stream=None,
        initial: int = 0,
        label: str = "",
    ):
        self.total, self.unit = total, unit
        self.period = PERIOD if period is None else period
        self.prefix = f"{label}: " if label else ""
        self.stream = stream or sys.stderr
        self.initial, self.start_time = initial, time.monotonic()
        self.last_print = self.start_time

    def update(self, done: int, force: bool = False, **extra: object) -> None:
        now = time.monotonic()
        if not force and now - self.last_print < self.period:
            return
        self.last_print = now
        elapsed = now - self.start_time
        rate = (done - self.initial) / elapsed if elapsed > 0 else 0.0
        eta = duration((self.total - done) / rate) if rate > 0 else "?"
        share = done / self.total if self.total else 1.0
        line = f"{self.prefix}{done}/{self.total} {self.unit} ({share:.0%})  "
        line += f"{rate:.1f} {self.unit}/s  ETA {eta}"
        line += "".join(f"  {name.replace('_', ' ')} {value}" for name, value in extra.items())
        print(line, file=self.stream, flush=True)
