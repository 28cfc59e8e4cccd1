"""Where arrays live: a `data` x `fsdp` x `model` device mesh, logical axis rules, hosts.

Parameters and optimiser state are placed by the logical axis names the model gives every
parameter (`embed`, `mlp`, `heads`, ...), batches by `batch`. The `model` axis splits the
MLP, the heads and the vocabulary across devices, as T5X's 1-D rules do. The `fsdp` axis
(fully sharded data parallelism, MaxText's name) is a data-parallel axis that also splits
every parameter's `embed` dimension, with the optimiser state and gradients that follow
it: batches are split over `data` and `fsdp` together, and XLA gathers each layer's
weights where the layer runs. With `fsdp` and `model` of 1 this is plain data parallelism.
"""

import argparse
import logging
import os
from collections.abc import Mapping, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import mesh_utils, multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

log = logging.getLogger(__name__)

DATA, FSDP, MODEL = "data", "fsdp", "model"
BATCH_AXES = (DATA, FSDP)  # the mesh axes a batch's rows are split over

# T5X's `standard_logical_axis_rules()` (partitioning.py) for 1-D parameter partitioning,
# with `batch` over both data-parallel axes and `embed` over `fsdp`. Rules are taken in
# order and a mesh axis once per array: an activation's `batch` takes `fsdp` first, so its
# `embed` stays whole; a parameter has no `batch`, so its `embed` is split.
LOGICAL_AXIS_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", BATCH_AXES),
    ("vocab", MODEL),
    ("embed", FSDP),
    ("mlp", MODEL),
    ("heads", MODEL),
    ("kv", None),
    ("joined_kv", MODEL),
    ("relpos_buckets", None),
    ("abspos_buckets", None),
    ("length", None),
    ("layers", None),
    ("stack", None),
    ("mlp_activations", None),
)


def make_mesh(
    model_parallelism: int = 1,
    fsdp_parallelism: int = 1,
    devices: Sequence[jax.Device] | None = None,
) -> Mesh:
    """`devices` (all devices of all hosts) as `data` x `fsdp` x `model`, laid out on the
    physical topology by `mesh_utils` on TPUs (several slices: `data` across them, over
    DCN), in process order elsewhere. An `fsdp` axis may span hosts; a `model` axis
    spans hosts only whole (warned: its traffic is every layer's)."""
    devices = list(jax.devices() if devices is None else devices)
    hosts = len({d.process_index for d in devices})
    per_host = len(devices) // hosts
    if model_parallelism < 1 or (per_host % model_parallelism and model_parallelism % per_host):
        raise ValueError(
            f"model_parallelism ({model_parallelism}) must divide each host's {per_host} "
            "devices, or be a multiple of them (a model axis over whole hosts)"
        )
    if model_parallelism > per_host:
        log.warning(
            "the model axis spans %d hosts: every layer's collectives cross the network "
            "between hosts (DCN), far slower than the links inside one (ICI, NVLink); "
            "prefer train.fsdp_parallelism across hosts",
            model_parallelism // per_host,
        )
    if fsdp_parallelism < 1 or len(devices) % (fsdp_parallelism * model_parallelism):
        raise ValueError(
            f"fsdp_parallelism x model_parallelism ({fsdp_parallelism} x {model_parallelism}) "
            f"must divide the {len(devices)} devices"
        )
    shape = (len(devices) // (fsdp_parallelism * model_parallelism), fsdp_parallelism)
    shape += (model_parallelism,)
    return Mesh(_device_grid(shape, devices), (DATA, FSDP, MODEL))


def _device_grid(shape: tuple[int, ...], devices: list[jax.Device]) -> np.ndarray:
    """The devices in `shape`: on TPUs by the physical topology (`mesh_utils`: axes on
    ICI neighbours, and the data axis across slices of a multislice job), elsewhere in
    process order, so that each host's devices are contiguous."""
    if devices[0].platform != "tpu":
        return np.array(devices).reshape(shape)
    slices = len({getattr(d, "slice_index", 0) for d in devices})
    if slices > 1 and shape[0] % slices == 0:
        within = (shape[0] // slices, *shape[1:])
        return mesh_utils.create_hybrid_device_mesh(
            within, (slices, 1, 1), devices, allow_split_physical_axes=True
        )
    return mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)


def batch_shards(mesh: Mesh) -> int:
    """How many ways a batch's rows are split: the data-parallel devices."""
    return mesh.shape[DATA] * mesh.shape[FSDP]


def logical_shardings(mesh: Mesh, boxed_tree) -> object:
    """`NamedSharding`s for a tree whose leaves carry logical axis names (`nn.Partitioned`,
    as `jax.eval_shape(model.init, ...)` returns); unnamed leaves are replicated."""
    specs = nn.get_partition_spec(boxed_tree)
    return nn.logical_to_mesh_sharding(specs, mesh, LOGICAL_AXIS_RULES)


def abstract_arrays(tree, shardings) -> object:
    """`jax.ShapeDtypeStruct`s of `tree`'s leaves placed by `shardings` (a matching tree, or
    one sharding for all): what Orbax restores into and what lowering a step needs."""
    if isinstance(shardings, jax.sharding.Sharding):
        shardings = jax.tree.map(lambda _: shardings, tree)
    return jax.tree.map(
        lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
        tree,
        shardings,
    )


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Rows split over `data` and `fsdp`, the rest of each array whole."""
    return NamedSharding(mesh, PartitionSpec(BATCH_AXES))


def global_batch(mesh: Mesh, local: Mapping) -> dict:
    """Assemble each host's rows into global arrays sharded by `batch` (one host: a
    `device_put`). The global batch is the hosts' batches in process order."""
    sharding = batch_sharding(mesh)
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), dict(local)
    )


def whole_batch(mesh: Mesh, batch: Mapping[str, np.ndarray]) -> dict:
    """A batch that every host holds whole as global arrays split by `batch_sharding`:
    each device takes its rows, whatever hosts and layout the mesh has."""
    return place(dict(batch), jax.tree.map(lambda _: batch_sharding(mesh), dict(batch)))


def row_groups(mesh: Mesh) -> tuple[int, int]:
    """(groups, this host's group). A batch's rows are split over the data-parallel axes;
    hosts whose devices hold the same rows (a `model` axis across hosts) form a group,
    which reads its rows together: the groups, not the hosts, split the training data."""
    holders: dict[int, set[int]] = {}
    for shard, devices in enumerate(mesh.devices.reshape(batch_shards(mesh), -1)):
        for device in devices:
            holders.setdefault(device.process_index, set()).add(shard)
    groups = sorted({tuple(sorted(shards)) for shards in holders.values()})
    if sum(map(len, groups)) != batch_shards(mesh):
        raise ValueError(f"hosts hold overlapping sets of a batch's rows: {groups}")
    return len(groups), groups.index(tuple(sorted(holders[jax.process_index()])))


def place(tree, shardings) -> object:
    """Host arrays that every host holds whole (a checkpoint read on each) as global
    arrays placed by `shardings`: each device takes its slice, on any mesh and any hosts."""
    return jax.tree.map(
        lambda x, sharding: jax.make_array_from_callback(
            np.shape(x), sharding, lambda index: np.asarray(x)[index]
        ),
        tree,
        shardings,
    )


def gather(array: jax.Array | np.ndarray) -> np.ndarray:
    """The whole of a global array (or every host's local array, stacked) on every host."""
    if jax.process_count() == 1:
        return np.asarray(array)
    return np.asarray(multihost_utils.process_allgather(array, tiled=isinstance(array, jax.Array)))


def add_distributed_flags(parser: argparse.ArgumentParser) -> None:
    """The flags of `initialize_distributed`, for a binary's command line."""
    parser.add_argument("--coordinator_address", help="HOST:PORT of process 0 (several hosts)")
    parser.add_argument("--num_processes", type=int)
    parser.add_argument("--process_id", type=int)


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> None:
    """Join several hosts with `jax.distributed`: with the given coordinator, process count
    and id (GPU or CPU clusters), or found by JAX itself on a Cloud TPU pod slice, in a
    SLURM job of several tasks, or when a launcher asks (`DSBS_DISTRIBUTED=1`:
    launch/tpu_vm.sh, whose ssh sessions may not carry the TPU's own variables). One host
    with no coordinator does nothing."""
    if coordinator_address is not None:
        jax.distributed.initialize(coordinator_address, num_processes, process_id)
    elif _several_slurm_tasks() or _tpu_pod() or os.environ.get("DSBS_DISTRIBUTED") == "1":
        jax.distributed.initialize()
    else:
        return
    log.info("process %d of %d joined", jax.process_index(), jax.process_count())


def _several_slurm_tasks() -> bool:
    return int(os.environ.get("SLURM_NTASKS", "1")) > 1


def _tpu_pod() -> bool:
    return "," in os.environ.get("TPU_WORKER_HOSTNAMES", "")
