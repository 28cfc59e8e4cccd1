"""The mesh a training run gets on a TPU slice: the one `dsbs-fit` showed fits there.

    python -m dsbs_jax.meshes --topology v4-8 -- DSBS_TRAIN_ARGS...

launch/tpu_vm.sh and launch/sweep.py add the mesh bindings for the run's model size and
slice, so that a launch does not have to be tried on rented chips to find one that fits.
`MEASURED` is the one table of them: the meshes BENCHMARKS.md's "dsbs-fit" figures show
fitting (a test checks the two agree). A larger slice of the same chips gets the mesh of
the largest measured slice it is a multiple of: its extra chips only add `data` replicas,
each with fewer of the batch's examples and the same share of the model. A command line
that binds `train.fsdp_parallelism` or `train.model_parallelism` itself keeps its own mesh;
a combination not measured keeps the gin files' mesh, with a note to run dsbs-fit first.
The command prints that note, then the `--gin.` bindings to add, one a line. Only the
standard library: the launchers run it with any Python.
"""

import argparse
import dataclasses
import re
import sys
from collections.abc import Sequence

from dsbs_jax import gin_paths, hardware


@dataclasses.dataclass(frozen=True)
class Fit:
    """A mesh that fits (the `data` axis takes the devices left) and dsbs-fit's figures."""

    fsdp: int
    model: int
    held_gib: float  # XLA's peak per chip
    limit_gib: float  # what the TPU compiler allows a chip


# (slice, student size) -> the mesh measured to fit, with the paper's settings (paper.gin,
# CQA's lengths, dsbs mode, BATCH_SIZE 64, 32 for XXL) and no teacher: BENCHMARKS.md, dsbs-fit.
MEASURED = {
    ("v4-8", "base"): Fit(fsdp=1, model=1, held_gib=5.95, limit_gib=30.75),
    ("v5e-16", "base"): Fit(fsdp=1, model=1, held_gib=3.78, limit_gib=15.75),
    ("v4-8", "large"): Fit(fsdp=1, model=1, held_gib=16.90, limit_gib=30.75),
    ("v4-8", "xl"): Fit(fsdp=4, model=1, held_gib=23.27, limit_gib=30.75),
    ("v4-32", "xxl"): Fit(fsdp=4, model=4, held_gib=12.89, limit_gib=30.75),
    ("v5e-16", "large"): Fit(fsdp=1, model=1, held_gib=11.63, limit_gib=15.75),
    ("v5e-16", "xl"): Fit(fsdp=8, model=1, held_gib=11.86, limit_gib=15.75),
}
MESH_PARAMETERS = ("train.fsdp_parallelism", "train.model_parallelism")
# The student's size is the last model file the gin files include (flan_t5_* include t5_1_1_*).
_MODEL_FILE = re.compile(r"(?:t5_1_1|flan_t5)_(small|base|large|xl|xxl)\.gin")
_TEACHER = re.compile(r"TEACHER_CHECKPOINT_PATH\s*=\s*(.*?)\s*$")


class Unmeasured(LookupError):
    """No dsbs-fit figure says which mesh fits."""


def mesh_for(topology: str, size: str) -> tuple[str, Fit]:
    """The mesh that fits `size` on the slice `topology` (`v5litepod-16` is `v5e-16`), and
    the slice it was measured on: `topology` or the largest of the same chips that
    `topology` is a multiple of."""
    tpu = hardware.tpu_slice(topology)
    fits = []
    for (name, measured_size), fit in MEASURED.items():
        measured = hardware.tpu_slice(name)
        same_chips = tpu and measured.generation == tpu.generation
        if measured_size == size and same_chips and tpu.chips % measured.chips == 0:
            fits.append((measured.chips, name, fit))
    if not fits:
        raise Unmeasured(f"no dsbs-fit figure for {size} on {topology} (nor a smaller slice of it)")
    _, name, fit = max(fits)
    return name, fit


def model_size(gin_files: Sequence[str]) -> str | None:
    """The student's size (`base`, `xl`, ...): the last gin/models/ file read, if any."""
    size = None
    for gin_file in gin_files:
        for path, _ in gin_paths.walk(gin_file):
            if match := _MODEL_FILE.fullmatch(path.name):
                size = match[1]
    return size


def has_teacher(gin_files: Sequence[str], bindings: Sequence[str]) -> bool:
    """Whether the run has an online teacher: the last TEACHER_CHECKPOINT_PATH is not None."""
    lines = [line for f in gin_files for _, line in gin_paths.walk(f)]
    values = [m[1] for line in (*lines, *bindings) if (m := _TEACHER.match(line))]
    return bool(values) and values[-1] != "None"


def binds_mesh(binding: str) -> bool:
    """`binding` (NAME=VALUE) sets an axis of the mesh, in any scope or module spelling."""
    name = binding.split("=", 1)[0].strip()
    return any(name == p or name.endswith(f".{p}") for p in MESH_PARAMETERS)


def choose(
    topology: str, gin_files: Sequence[str], bindings: Sequence[str]
) -> tuple[list[str], str]:
    """The bindings (NAME=VALUE) that give a run on `topology` its mesh, and a note on why."""
    if own := [b for b in bindings if binds_mesh(b)]:
        return [], f"mesh: the command line's ({', '.join(own)})"
    try:
        size = model_size(gin_files)
        if size is None:
            raise Unmeasured("the gin files include no gin/models/ file to give the model size")
        if has_teacher(gin_files, bindings):
            raise Unmeasured("dsbs-fit's figures are without an online teacher")
        measured_on, fit = mesh_for(topology, size)
    except (Unmeasured, FileNotFoundError) as error:
        return [], (
            f"mesh unknown: {error}; run dsbs-fit --topology {topology} first (docs/launching.md, "
            "Will it fit?); the gin files' mesh is kept"
        )
    tpu = hardware.tpu_slice(topology)
    data = tpu.chips // (fit.fsdp * fit.model)
    source = "dsbs-fit" if measured_on == tpu.name else f"dsbs-fit on {measured_on}"
    larger = "" if measured_on == tpu.name else f"; {topology}'s other chips add data replicas"
    return [f"{MESH_PARAMETERS[0]}={fit.fsdp}", f"{MESH_PARAMETERS[1]}={fit.model}"], (
        f"mesh for {size} on {topology}: data {data} x fsdp {fit.fsdp} x model {fit.model} "
        f"({source}: {fit.held_gib:.2f} GiB of {fit.limit_gib:.2f} per chip, BENCHMARKS.md"
        f"{larger})"
    )


def gin_arguments(args: Sequence[str]) -> tuple[list[str], list[str]]:
    """A gin-configured binary's `--gin_file` paths and `--gin.NAME=VALUE` bindings."""
    files, bindings = [], []
    words = iter(args)
    for arg in words:
        if arg == "--gin_file":
            files.append(next(words, ""))
        elif arg.startswith("--gin_file="):
            files.append(arg.removeprefix("--gin_file="))
        elif arg.startswith("--gin."):
            bindings.append(arg.removeprefix("--gin."))
    return files, bindings


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dsbs_jax.meshes", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--topology", required=True, help="a TPU slice: v4-8, v5e-16, ...")
    parser.add_argument("args", nargs="*", help="dsbs-train's arguments (after --)")
    args = parser.parse_args(argv)
    chosen, note = choose(args.topology, *gin_arguments(args.args))
    print("\n".join([note, *(f"--gin.{binding}" for binding in chosen)]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
