"""Where arrays live: a `data` x `model` device mesh, T5X's logical axis rules, and hosts.

Parameters and optimiser state are placed by the logical axis names the model gives every
parameter (`embed`, `mlp`, `heads`, ...), batches by `batch`. With a `model` axis of 1
this is data parallelism; a larger `model` axis splits the MLP, the heads and the
vocabulary across devices, as T5X's default rules do.
"""

import argparse
import logging
import os
from collections.abc import Mapping

import flax.linen as nn
import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA, MODEL = "data", "model"

# T5X's `standard_logical_axis_rules()` (partitioning.py) for 1-D parameter partitioning.
LOGICAL_AXIS_RULES: tuple[tuple[str, str | None], ...] = (
    ("batch", DATA),
    ("vocab", MODEL),
    ("embed", None),
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


def make_mesh(model_parallelism: int = 1) -> Mesh:
    """All devices of all hosts as `data` x `model`; each host's devices are contiguous in
    the `data` axis, so a host's rows of a global batch sit on its own devices."""
    devices = np.array(jax.devices())
    if model_parallelism < 1 or jax.local_device_count() % model_parallelism:
        raise ValueError(
            f"model_parallelism ({model_parallelism}) must divide each host's "
            f"{jax.local_device_count()} devices: a model axis spans one host"
        )
    return Mesh(devices.reshape(-1, model_parallelism), (DATA, MODEL))


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
    """Rows split over `data`, the rest of each array whole."""
    return NamedSharding(mesh, PartitionSpec(DATA))


def global_batch(mesh: Mesh, local: Mapping) -> dict:
    """Assemble each host's rows into global arrays sharded by `batch` (one host: a
    `device_put`). The global batch is the hosts' batches in process order."""
    sharding = batch_sharding(mesh)
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), dict(local)
    )


def host_share(batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """This host's equal share of the rows of a batch that every host holds whole."""
    hosts, index = jax.process_count(), jax.process_index()
    return {k: np.array_split(v, hosts)[index] for k, v in batch.items()}


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
    logging.info("process %d of %d joined", jax.process_index(), jax.process_count())


def _several_slurm_tasks() -> bool:
    return int(os.environ.get("SLURM_NTASKS", "1")) > 1


def _tpu_pod() -> bool:
    return "," in os.environ.get("TPU_WORKER_HOSTNAMES", "")
