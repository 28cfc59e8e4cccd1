"""What a long run shows while it works: a progress line, and its throughput figures."""

import sys
import time

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


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class Progress:
    """One line per `period` seconds: step, loss, steps/s, examples/s and ETA."""

    def __init__(self, total_steps: int, first_step: int, period: float = 10.0, stream=None):
        self.total, self.period = total_steps, period
        self.stream = stream or sys.stderr
        self.start_step, self.start_time = first_step, time.monotonic()
        self.last_print = 0.0

    def rate(self, step: int) -> float:
        """Steps per second since the first step of this process."""
        elapsed = time.monotonic() - self.start_time
        return (step - self.start_step) / elapsed if elapsed > 0 else 0.0

    def update(self, step: int, loss: float, examples_per_step: float, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last_print < self.period:
            return
        self.last_print = now
        rate = self.rate(step)
        eta = _duration((self.total - step) / rate) if rate else "?"
        line = (
            f"step {step}/{self.total} ({step / self.total:.0%})  loss {loss:.4f}  "
            f"{rate:.2f} steps/s  {rate * examples_per_step:.1f} examples/s  ETA {eta}"
        )
        print(line, file=self.stream, flush=True)

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
    """One line per `period` seconds (and when forced) for a job of `total` items:
    done/total, percent, items/s, ETA, then any `extra` figures (e.g. `skipped=3`).

    `initial` items were done before this process started (a resumed job); the rate and
    ETA count only this process's own work.
    """

    def __init__(
        self,
        total: int,
        unit: str = "examples",
        period: float = 10.0,
        stream=None,
        initial: int = 0,
    ):
        self.total, self.unit, self.period = total, unit, period
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
        eta = _duration((self.total - done) / rate) if rate > 0 else "?"
        share = done / self.total if self.total else 1.0
        line = f"{done}/{self.total} {self.unit} ({share:.0%})  {rate:.1f} {self.unit}/s  ETA {eta}"
        line += "".join(f"  {name.replace('_', ' ')} {value}" for name, value in extra.items())
        print(line, file=self.stream, flush=True)
