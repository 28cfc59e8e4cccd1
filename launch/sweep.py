"""Expand a grid of training runs, run them one after another or print their commands.

    python launch/sweep.py GRID.json --root DIR [--only AXIS=VALUE[,VALUE...] ...]
        [--launcher "launch/gpu.sh"] [--parallel N [--log_dir DIR]] [--topology SLICE]
        [--max_resumes N] [--dry-run] [--report] [--gin.NAME=VALUE ...]

A grid file (gin/runs/paper/grid.json is the paper's) names the gin files every run reads
and its axes, in order:

    {"description": "...", "gin_files": ["runs/paper/paper.gin"],
     "axes": {"dataset": ["cqa", "svamp"], "method": ["dsbs-llm"], "SEED": [0, 1, 2]}}

An axis in lower case picks a gin file per value, `{axis}/{value}.gin` beside the grid
file; an axis in upper case is a gin macro bound to each value. Every combination is one
run, written to `ROOT/{axis}={value},...` (its MODEL_DIR, named by its settings), and is
`dsbs-train` with the grid's gin files, the axis files, the macros and then the
`--gin.NAME=VALUE` bindings given here (which apply to every run and win). With
`--topology SLICE` (a TPU slice, e.g. v4-32), each run also gets the mesh that dsbs-fit
measured to fit its size there (dsbs_jax/meshes.py, as launch/tpu_vm.sh picks it), before
those bindings; binding train.fsdp_parallelism or train.model_parallelism here keeps yours.
Which mesh each size gets, and why, goes to stderr.

`--dry-run` prints one command per run (for a cluster's scheduler: each is a complete
command line). Otherwise the runs go through `--launcher` (default launch/local.sh),
`--parallel N` at a time (on CPU a small model's run keeps about one core busy; with
several, each run's output goes to a log file). When the launcher succeeds, the run's
`ROOT/NAME/sweep_launched.json` records it, and the same command later skips that run: it
resumes an interrupted sweep (the trainer resumes a run that was cut short) and does not
submit a queued job twice (`sbatch` succeeds once the job is queued); delete the file to
launch the run again. A failed run is reported and the others still run (exit 1 at the
end). A run that exits 75 (dsbs-train stopped by SIGTERM after saving a checkpoint, as on a
preempted VM) is not finished: it is launched again at once, which resumes it, at most
`--max_resumes` times (default 3), and otherwise left unmarked for the next sweep (exit 75
at the end, when nothing failed). A SIGTERM to the sweep itself starts no more runs, passes
the SIGTERM on to the running ones, waits for them to save and exits 75: run the same
command to go on. `--report` then summarises ROOT with dsbs-report, here, into ROOT/report.
"""

import argparse
import concurrent.futures
import dataclasses
import datetime
import itertools
import json
import os
import pathlib
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence

from etils import epath

from dsbs_jax import hardware, meshes
from dsbs_jax.cli import PREEMPTED_EXIT, OnSigterm

ROOT = pathlib.Path(__file__).resolve().parents[1]
GIN_DIR = ROOT / "gin"
DEFAULT_LAUNCHER = "launch/local.sh"
LAUNCHED = "sweep_launched.json"
# A run's exit status when SIGTERM ended it before dsbs-train could catch it: as Python's
# subprocess reports it, and as a shell launcher does.
KILLED_BY_SIGTERM = (-signal.SIGTERM, 128 + signal.SIGTERM)
# Axis values name directories: `axis=value` joined by commas must read back unambiguously.
VALUE = re.compile(r"[A-Za-z0-9_+-][A-Za-z0-9_.+-]*")


class GridError(ValueError):
    """The grid file or a selection does not describe runs that can be made."""


@dataclasses.dataclass(frozen=True)
class Run:
    """One combination of axis values: where it writes and the gin it adds."""

    name: str
    gin_files: tuple[str, ...]
    bindings: tuple[str, ...]


def _gin_path(path: pathlib.Path) -> str:
    """Relative to `gin/` when it lies there, so commands work from any directory."""
    try:
        return str(path.resolve().relative_to(GIN_DIR))
    except ValueError:
        return str(path.resolve())


def _gin_literal(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise GridError(f"axis value {value!r}: expected a number or a string")
    return repr(value)


def _check_value(value: object) -> None:
    _gin_literal(value)
    if not VALUE.fullmatch(str(value)):
        raise GridError(f"axis value {value!r}: expected letters, digits, '_', '+', '-', '.'")


def load_grid(path: pathlib.Path) -> dict:
    """The grid file, checked: its keys, and a gin file for every value of every file axis."""
    try:
        grid = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise GridError(f"{path}: cannot read the grid ({error})") from error
    if not isinstance(grid, dict) or not isinstance(grid.get("axes"), dict) or not grid["axes"]:
        raise GridError(f"{path}: expected an object with a non-empty 'axes' object")
    if unknown := set(grid) - {"description", "gin_files", "axes"}:
        expected = "description, gin_files, axes"
        raise GridError(f"{path}: unknown keys {sorted(unknown)} (expected {expected})")
    for axis, values in grid["axes"].items():
        if not isinstance(values, list) or not values:
            raise GridError(f"{path}: axis {axis!r} must list at least one value")
        for value in values:
            _check_value(value)
        if axis.islower():
            for value in values:
                if not (path.parent / axis / f"{value}.gin").is_file():
                    raise GridError(f"{path}: {axis} {value!r} has no gin file {axis}/{value}.gin")
        elif not axis.isupper():
            raise GridError(f"{path}: axis {axis!r}: lower case (files) or upper case (a macro)")
    return grid


def select(axes: dict[str, list], only: Sequence[str]) -> dict[str, list]:
    """The axes restricted by `AXIS=V1,V2` selections (values as the grid spells them)."""
    selected = dict(axes)
    for choice in only:
        axis, _, wanted = choice.partition("=")
        if axis not in axes or not wanted:
            raise GridError(f"--only {choice!r}: expected AXIS=VALUE[,VALUE], AXIS in {list(axes)}")
        spelled = {str(value): value for value in axes[axis]}
        if missing := [w for w in wanted.split(",") if w not in spelled]:
            raise GridError(f"--only {choice!r}: {missing} not in {axis}'s values {list(spelled)}")
        selected[axis] = [spelled[w] for w in wanted.split(",")]
    return selected


def expand(grid_path: pathlib.Path, grid: dict, only: Sequence[str] = ()) -> list[Run]:
    """Every combination of the (selected) axis values, the first axis outermost."""
    axes = select(grid["axes"], only)
    runs = []
    for values in itertools.product(*axes.values()):
        chosen = dict(zip(axes, values, strict=True))
        runs.append(
            Run(
                name=",".join(f"{axis.lower()}={value}" for axis, value in chosen.items()),
                gin_files=tuple(
                    _gin_path(grid_path.parent / axis / f"{value}.gin")
                    for axis, value in chosen.items()
                    if axis.islower()
                ),
                bindings=tuple(
                    f"{axis}={_gin_literal(value)}"
                    for axis, value in chosen.items()
                    if axis.isupper()
                ),
            )
        )
    return runs


def command(
    run: Run,
    grid: dict,
    root: str,
    extra_bindings: Sequence[str],
    launcher: Sequence[str],
    mesh: Sequence[str] = (),
) -> list[str]:
    """The run's command line: launcher, dsbs-train, gin files, MODEL_DIR, macros, mesh,
    extras."""
    model_dir = f"{root.rstrip('/')}/{run.name}"
    return [
        *launcher,
        "dsbs-train",
        *[f"--gin_file={f}" for f in gin_files(run, grid)],
        f"--gin.MODEL_DIR={_gin_literal(model_dir)}",
        *[f"--gin.{binding}" for binding in (*run.bindings, *mesh, *extra_bindings)],
    ]


def gin_files(run: Run, grid: dict) -> list[str]:
    return [*grid.get("gin_files", []), *run.gin_files]


def mesh_bindings(
    runs: Sequence[Run], grid: dict, extra_bindings: Sequence[str], topology: str
) -> list[list[str]]:
    """Each run's mesh bindings on `topology`; each distinct note once, on stderr."""
    chosen = [
        meshes.choose(topology, gin_files(run, grid), [*run.bindings, *extra_bindings])
        for run in runs
    ]
    for note in dict.fromkeys(note for _, note in chosen):
        print(f"sweep: {note}", file=sys.stderr)
    return [bindings for bindings, _ in chosen]


def shell_line(argv: Sequence[str]) -> str:
    """`argv` as a shell line that reads like the README's: `--gin.X="'text'"`."""
    words = []
    for word in argv:
        if shlex.quote(word) != word and not set(word) & set('"$`\\!'):
            word = f'"{word}"'
        else:
            word = shlex.quote(word)
        words.append(word)
    return " ".join(words)


def launched(model_dir: epath.Path) -> bool:
    return (model_dir / LAUNCHED).exists()


def mark_launched(model_dir: epath.Path, argv: list[str]) -> None:
    model_dir.mkdir(parents=True, exist_ok=True)
    when = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    (model_dir / LAUNCHED).write_text(json.dumps({"command": argv, "launched": when}) + "\n")


class _Processes(OnSigterm):
    """The runs' processes, and the sweep's own SIGTERM: after it no process starts, and
    those running get a SIGTERM each (dsbs-train saves a checkpoint and exits 75)."""

    def __init__(self):
        self.running: set[subprocess.Popen] = set()
        self.lock = threading.RLock()  # a second SIGTERM may come while the first holds it
        self.stopping = False

    def on_sigterm(self) -> None:
        with self.lock:
            self.stopping = True
            for process in self.running:
                process.send_signal(signal.SIGTERM)

    def run(self, argv: list[str], output) -> int | None:
        """`argv`'s exit status; None when the sweep is stopping and it did not start."""
        with self.lock:
            if self.stopping:
                return None
            process = subprocess.Popen(argv, cwd=ROOT, stdout=output, stderr=output)
            self.running.add(process)
        try:
            return process.wait()
        finally:
            with self.lock:
                self.running.discard(process)


@dataclasses.dataclass
class Outcomes:
    """The runs launched that did not finish, by name."""

    failed: list[str] = dataclasses.field(default_factory=list)
    preempted: list[str] = dataclasses.field(default_factory=list)  # resume them
    stopped: bool = False  # the sweep itself got SIGTERM


def run_all(
    commands: list[tuple[Run, list[str]]],
    root: str,
    parallel: int,
    log_dir: pathlib.Path,
    max_resumes: int = 3,
) -> Outcomes:
    """Launch the runs not launched before, `parallel` at a time, each preempted one again at
    once (at most `max_resumes` times). One at a time, a run prints to the console; several
    at a time, each appends to `log_dir/NAME.log` and the console gets a line as each starts
    and ends."""
    total, todo = len(commands), []
    for index, (run, argv) in enumerate(commands, 1):
        if launched(epath.Path(root) / run.name):
            print(f"[{index}/{total}] {run.name}: launched before, skipped", flush=True)
        else:
            todo.append((index, run, argv))
    done, started, lock = 0, time.monotonic(), threading.Lock()
    outcomes = Outcomes()

    def attempt(run: Run, argv: list[str], processes: _Processes) -> int | None:
        if parallel == 1:
            return processes.run(argv, None)
        log_dir.mkdir(parents=True, exist_ok=True)
        with open(log_dir / f"{run.name}.log", "a") as output:
            return processes.run(argv, output)

    def launch(index: int, run: Run, argv: list[str], processes: _Processes) -> None:
        nonlocal done
        for resumes in range(max_resumes + 1):
            again = f" (resuming, {resumes} of {max_resumes})" if resumes else ""
            if processes.stopping:
                return
            print(f"[{index}/{total}] {run.name}{again}", flush=True)
            status = attempt(run, argv, processes)
            if status in KILLED_BY_SIGTERM:  # before it could save: resumed all the same
                status = PREEMPTED_EXIT
            if status != PREEMPTED_EXIT or processes.stopping:
                break
        if status is None:  # the sweep stopped before this run started
            return
        if status == 0:
            mark_launched(epath.Path(root) / run.name, argv)
            outcome = "finished"
        elif status == PREEMPTED_EXIT:
            outcomes.preempted.append(run.name)
            outcome = f"preempted (exit {status}), not finished"
        else:
            outcomes.failed.append(run.name)
            outcome = f"FAILED (exit {status})"
        with lock:
            done += 1
            # Wall time per finished run already reflects the runs going on side by side.
            eta = (time.monotonic() - started) / done * (len(todo) - done) / 60
            print(
                f"[{index}/{total}] {run.name} {outcome}; {done}/{len(todo)} done, "
                f"ETA {eta:.0f} min",
                flush=True,
            )

    with _Processes() as processes, concurrent.futures.ThreadPoolExecutor(parallel) as pool:
        list(pool.map(lambda job: launch(*job, processes), todo))
        outcomes.stopped = processes.stopping
    return outcomes


def absolute_root(root: str) -> str:
    """A local root made absolute (runs start in the repository, not here); URLs as given."""
    return root if "://" in root else os.path.abspath(root)


def parse_flags(argv: Sequence[str]) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(prog="sweep.py", description=__doc__.split("\n")[0])
    parser.add_argument("grid", type=pathlib.Path, help="a grid JSON file")
    parser.add_argument("--root", required=True, help="runs go to ROOT/{settings}")
    parser.add_argument("--only", action="append", default=[], help="AXIS=V1,V2 (repeatable)")
    parser.add_argument("--launcher", default=DEFAULT_LAUNCHER, help="runs dsbs-train")
    parser.add_argument("--parallel", type=int, default=1, help="runs at a time (>= 1)")
    parser.add_argument("--log_dir", help="logs of --parallel runs (ROOT/logs for a local ROOT)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    parser.add_argument("--report", action="store_true", help="then dsbs-report into ROOT/report")
    parser.add_argument("--topology", help="a TPU slice (v4-32): each run gets dsbs-fit's mesh")
    parser.add_argument(
        "--max_resumes", type=int, default=3, help="launches again of a preempted run (exit 75)"
    )
    bindings = [a.removeprefix("--gin.") for a in argv if a.startswith("--gin.")]
    return parser.parse_args([a for a in argv if not a.startswith("--gin.")]), bindings


def main(argv: Sequence[str] | None = None) -> int:
    args, bindings = parse_flags(sys.argv[1:] if argv is None else argv)
    root = absolute_root(args.root)
    try:
        grid = load_grid(args.grid)
        runs = expand(args.grid, grid, args.only)
        if args.parallel < 1:
            raise GridError(f"--parallel {args.parallel}: expected 1 or more runs at a time")
        if args.max_resumes < 0:
            raise GridError(f"--max_resumes {args.max_resumes}: expected 0 or more")
        if args.log_dir is None and "://" in root and args.parallel > 1:
            raise GridError(f"--root {root} is not local: give --log_dir for the run logs")
        if args.topology and hardware.tpu_slice(args.topology) is None:
            slices = ", ".join(hardware.SLICES)
            raise GridError(f"--topology {args.topology}: expected a TPU slice ({slices})")
    except GridError as error:
        print(f"sweep: {error}", file=sys.stderr)
        return 2
    launcher = shlex.split(args.launcher)
    mesh = mesh_bindings(runs, grid, bindings, args.topology) if args.topology else [[]] * len(runs)
    commands = [
        (run, command(run, grid, root, bindings, launcher, run_mesh))
        for run, run_mesh in zip(runs, mesh, strict=True)
    ]
    if args.dry_run:
        print("\n".join(shell_line(argv) for _, argv in commands))
        return 0
    print(f"sweep: {len(commands)} runs of {args.grid} into {root}", flush=True)
    log_dir = pathlib.Path(args.log_dir or os.path.join(root, "logs"))
    outcomes = run_all(commands, root, args.parallel, log_dir, args.max_resumes)
    failed = outcomes.failed
    if args.report and not outcomes.stopped:
        report = [sys.executable, "-m", "dsbs_jax.report", root, "--output_dir", f"{root}/report"]
        failed += [] if subprocess.run(report, cwd=ROOT).returncode == 0 else ["dsbs-report"]
    if outcomes.stopped:
        print("sweep: stopped by SIGTERM: run the same command to go on", file=sys.stderr)
    if outcomes.preempted:
        names = ", ".join(outcomes.preempted)
        print(f"sweep: {len(outcomes.preempted)} preempted, to resume: {names}", file=sys.stderr)
    if failed:
        print(f"sweep: {len(failed)} failed: {', '.join(failed)}", file=sys.stderr)
    if outcomes.stopped:
        return PREEMPTED_EXIT
    return 1 if failed else PREEMPTED_EXIT if outcomes.preempted else 0


if __name__ == "__main__":
    sys.exit(main())
