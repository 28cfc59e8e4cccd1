"""The hardware a step is compiled for: TPU slices by the names users rent them by, this
host's CPUs, a local GPU; and keeping an installed libtpu quiet on machines without TPUs.

A TPU slice is compiled for without its chips: libtpu (the `tpu` extra, `jax[tpu]`)
describes the slice's topology (`jax.experimental.topologies.get_topology_desc`, as
MaxText's `train_compile.py` does), whose compile-only devices carry the chips' kind, their
hosts and their physical coordinates, so a mesh laid out on them and a step compiled for
that mesh are those of the real slice. A slice's name counts TensorCores for v4 and v5p
(two per chip, fused: one device per chip, "megacore"), chips for v5e and v6e, as Cloud
TPU does: a v4-8 is 4 chips on one host. Every host of these slices has 4 chips (8 for a
v5e-8 or v6e-8, which are one host).

libtpu, once installed, is loaded by JAX at its first computation on any machine, and on
one without TPUs prints its failed initialisation (worker host names, accelerator type).
`quiet_absent_tpu` (run when `dsbs_jax` is imported) tells JAX to use the CPU there, which
is what JAX falls back to anyway. No JAX import here: the package imports this module.
"""

import contextlib
import dataclasses
import glob
import importlib.util
import math
import os
import sys
import tempfile
from collections.abc import Iterator

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class TpuSlice:
    """A Cloud TPU slice: its topology for libtpu and each chip's memory."""

    name: str  # as Cloud TPU names it: v4-8, v5litepod-16 (here v5e-16), v5p-64
    generation: str
    topology: str  # libtpu's: "v4:2x2x1"
    chip_config: str  # "megacore": one device per chip of two TensorCores; else "default"
    chips_per_host: tuple[int, int, int]
    hbm_gib: float  # per chip: what one device holds

    @property
    def chips(self) -> int:
        return math.prod(int(n) for n in self.topology.split(":")[1].split("x"))

    @property
    def hosts(self) -> int:
        return self.chips // math.prod(self.chips_per_host)

    def describe(self) -> str:
        hosts = f"{self.hosts} hosts" if self.hosts > 1 else "1 host"
        return (
            f"{self.name}: {self.chips} chips of {self.generation} ({self.hbm_gib:g} GiB HBM "
            f"each), {hosts}, topology {self.topology.split(':')[1]}"
        )


def _slices() -> dict[str, TpuSlice]:
    # (name, generation, libtpu topology, chip config, chips per host, GiB per chip). Each
    # was checked to give its devices with libtpu 0.0.42.1; the HBM is Cloud TPU's figure.
    rows = [
        *(
            (f"v4-{2 * chips}", "TPU v4", f"v4:{shape}", "megacore", (2, 2, 1), 32)
            for chips, shape in ((4, "2x2x1"), (8, "2x2x2"), (16, "2x2x4"), (32, "2x4x4"))
        ),
        *(
            (f"v5p-{2 * chips}", "TPU v5p", f"v5:{shape}", "megacore", (2, 2, 1), 95)
            for chips, shape in ((4, "2x2x1"), (8, "2x2x2"), (16, "2x2x4"), (32, "2x4x4"))
        ),
        *(
            (f"{kind}-{chips}", gen, f"{kind}:{shape}", "default", per_host, hbm)
            for kind, gen, hbm in (("v5e", "TPU v5e", 16), ("v6e", "TPU v6e", 32))
            for chips, shape, per_host in (
                (1, "1x1", (1, 1, 1)),
                (4, "2x2", (2, 2, 1)),
                (8, "2x4", (2, 4, 1)),
                (16, "4x4", (2, 2, 1)),
                (32, "4x8", (2, 2, 1)),
                (64, "8x8", (2, 2, 1)),
            )
        ),
    ]
    return {row[0]: TpuSlice(*row) for row in rows}


SLICES = _slices()
ALIASES = {f"v5litepod-{name.split('-')[1]}": name for name in SLICES if name.startswith("v5e-")}
LOCAL = ("cpu", "gpu")  # this host's devices, not a slice


class TopologyError(RuntimeError):
    """libtpu could not describe the slice: what it said."""


def tpu_slice(name: str) -> TpuSlice | None:
    """The slice of that name (`v5litepod-16` is `v5e-16`), None for an unknown one."""
    return SLICES.get(ALIASES.get(name, name))


def known_names() -> list[str]:
    return [*SLICES, *LOCAL]


def libtpu_installed() -> bool:
    return importlib.util.find_spec("libtpu") is not None


def slice_devices(tpu: TpuSlice, verbose: bool = False) -> list:
    """The slice's compile-only devices. libtpu prints its own start-up noise on fd 2 (on a
    machine without TPUs, its failed search for the local chips): shown with `verbose`,
    else only when the topology cannot be made, in the error."""
    if not libtpu_installed():
        raise TopologyError(
            "compiling for a TPU slice needs libtpu: pip install 'dsbs-jax[tpu]' (or "
            "'jax[tpu]' at this jax's version)"
        )
    # Compile-only: no chip is opened, so another process holding libtpu's lock file
    # (a training run on this TPU VM, another dsbs-fit) is no reason to stop.
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    from jax.experimental import topologies

    with _captured_stderr(verbose) as said:
        try:
            return list(
                topologies.get_topology_desc(
                    topology_name=tpu.topology,
                    platform="tpu",
                    chip_config_name=tpu.chip_config,
                    chips_per_host_bounds=tpu.chips_per_host,
                    num_slices=1,
                ).devices
            )
        except Exception as error:  # libtpu's errors are JaxRuntimeError, RuntimeError, ...
            failure = f"{type(error).__name__}: {error}"
    raise TopologyError(
        f"libtpu could not describe {tpu.name} ({tpu.topology}): {failure}"
        + (f"\nlibtpu printed:\n{said[0].strip()}" if said and said[0].strip() else "")
    )


@contextlib.contextmanager
def _captured_stderr(shown: bool) -> Iterator[list[str]]:
    """File descriptor 2 into a list (its one item, once the block ends), unless `shown`."""
    said: list[str] = []
    if shown:
        yield said
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+") as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield said
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            said.append(capture.read())


# -- a quiet libtpu where there is no TPU -----------------------------------------------

_GOOGLE_PCI_VENDOR = "0x1ae0"  # TPUs (and other Google devices) on PCI
_ACCELERATOR_DEVICES = ("/dev/accel*", "/dev/vfio/[0-9]*", "/dev/nvidia*", "/dev/dxg", "/dev/kfd")


def _accelerator_hints() -> bool:
    """Whether this machine may have an accelerator: any Google PCI device, any TPU, NVIDIA
    or AMD device node. Over-inclusive on purpose: a hint leaves JAX to decide."""
    for path in glob.glob("/sys/bus/pci/devices/*/vendor"):
        try:
            with open(path) as vendor:
                if vendor.read().strip() == _GOOGLE_PCI_VENDOR:
                    return True
        except OSError:
            return True
    return any(glob.glob(pattern) for pattern in _ACCELERATOR_DEVICES)


def _other_jax_plugins() -> bool:
    """PJRT plugins besides libtpu (CUDA, ROCm, ...), which may want their own platform."""
    from importlib.metadata import entry_points

    return bool(entry_points(group="jax_plugins")) or (
        importlib.util.find_spec("jax_plugins") is not None
    )


def quiet_absent_tpu() -> None:
    """With libtpu installed on a Linux machine without any accelerator, JAX's first
    computation loads libtpu, which prints its failed search for TPUs before JAX falls back
    to the CPU: choose the CPU up front instead (JAX_PLATFORMS=cpu). Nothing changes where
    a TPU, a GPU or another JAX plugin may be present, or where the user chose platforms."""
    if (
        not sys.platform.startswith("linux")
        or os.environ.get("JAX_PLATFORMS")
        or os.environ.get("JAX_PLATFORM_NAME")
        or not libtpu_installed()
        or _accelerator_hints()
        or _other_jax_plugins()
    ):
        return
    os.environ["JAX_PLATFORMS"] = "cpu"
    if "jax" in sys.modules:  # imported first: its configuration read the environment
        from jax._src import xla_bridge

        if not xla_bridge.backends_are_initialized():
            sys.modules["jax"].config.update("jax_platforms", "cpu")
