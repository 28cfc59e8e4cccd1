"""Dispatch overlap: the training loop reading each step's metrics at once versus one step late.

JAX dispatches a step and returns before the devices finish it. A loop that then reads the
step's metrics (for logs and the NaN guard) waits for the step to end before it prepares
the next batch, so the host's work (the input pipeline, packing, placing the batch) and
the devices' work take turns. Reading them one step late, as `dsbs-train`'s loop does
(`programs/train.py`'s `_Loop`), lets the host prepare batch s + 1 while the devices
compute step s.

Both loops here run the quickstart's model and data as `dsbs-train` does: packed paired
batches of the synthetic task (`training_split.host_batches`, rows planned by
`training_split.plan_packing`), `Trainer.run_train_step`, and a `jax.device_get` of the metrics,
either right after the step (synced) or after the next one is dispatched (lagged). Each
prints its median step time and, per step, where the host spent it: building the batch,
and waiting for metrics. On a CPU the "devices" are the same cores as the host, so the
overlap is smaller than on an accelerator, where the host's work is free while the step
runs; a GPU or TPU shows it in full.

    python bench/dispatch.py [--steps 40] [--batch 32] [--data_dir DIR]
"""

import argparse
import pathlib
import statistics
import tempfile
import time

import jax
from common import log

import gin
import tasks
from dsbs_jax import gin_utils, partitioning, run_tasks
from dsbs_jax.data import training_split
from dsbs_jax.programs import prepare
from dsbs_jax.trainer import Trainer

ROOT = pathlib.Path(__file__).resolve().parents[1]
SIDES = {"label": "dsbs_synthetic_label_llm", "rationale": "dsbs_synthetic_rationale"}


def quickstart():
    """The quickstart's model, optimiser and lengths, read from its gin file."""
    gin.clear_config()
    gin_utils.parse(["runs/quickstart.gin"])
    config = gin.query_parameter("%MODEL_CONFIG").scoped_configurable_fn()
    optimizer = gin.query_parameter("train_script.train.optimizer").scoped_configurable_fn()
    lengths = gin.query_parameter("%TASK_FEATURE_LENGTHS")
    gin.clear_config()
    return config, optimizer, lengths


def run(trainer, state, batches, steps: int, lagged: bool) -> dict[str, list[float]]:
    """`steps` steps of `training_split.host_batches`' packed batches; per step its wall
    time, the time to build its batch, and the time the host waited for metrics."""
    times = {"step": [], "batch": [], "wait": []}
    pending = None
    for _ in range(steps):
        start = time.perf_counter()
        local, _ = next(batches)
        batch = partitioning.global_batch(trainer.mesh, local)
        built = time.perf_counter()
        state, metrics = trainer.run_train_step(state, batch)
        if lagged:
            metrics, pending = pending, metrics
        waited = time.perf_counter()
        if metrics is not None:
            jax.device_get(metrics)
        end = time.perf_counter()
        times["step"].append(end - start)
        times["batch"].append(built - start)
        times["wait"].append(end - waited)
    jax.block_until_ready(state)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40, help="timed steps of each loop")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--data_dir", type=pathlib.Path, help="a prepared synthetic TFDS dir")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        data_dir = args.data_dir
        if data_dir is None:
            log("generating the synthetic dataset")
            data_dir = pathlib.Path(directory)
            prepare.build("synthetic", None, data_dir)
        tasks.register(data_dir=str(data_dir))
        config, optimizer, lengths = quickstart()
        by_task = run_tasks.task_lengths("dsbs", SIDES["label"], SIDES["rationale"], lengths)
        scanned = training_split.check_lengths(by_task, allow_truncation=False)
        mesh = partitioning.make_mesh()
        shards = partitioning.batch_shards(mesh)
        shapes = training_split.plan_packing(by_task, scanned, args.batch, shards, seed=0)
        trainer = Trainer(config, optimizer, mesh, {"label": 0.5, "rationale": 0.5})
        figures = {}
        for name, lagged in (("synced", False), ("lagged", True)):
            state = trainer.create_state(seed=0)
            batches = training_split.host_batches(
                by_task, args.batch, 0, 1, [0], True, None, shapes
            )
            log(f"{name}: compiling and warming up")
            run(trainer, state, batches, 3, lagged)
            state = trainer.create_state(seed=0)
            log(f"{name}: timing {args.steps} steps")
            times = run(trainer, state, batches, args.steps, lagged)
            figures[name] = {k: statistics.median(v) * 1000 for k, v in times.items()}
    synced, lagged = figures["synced"], figures["lagged"]
    print(
        f"dispatch overlap quickstart batch={args.batch} steps={args.steps} "
        f"devices={jax.device_count()} {jax.devices()[0].platform} | "
        + " | ".join(
            f"{name}: {f['step']:.1f} ms/step (batch {f['batch']:.1f} ms, "
            f"waiting for metrics {f['wait']:.1f} ms)"
            for name, f in figures.items()
        )
        + f" | lagged/synced step time {lagged['step'] / synced['step']:.2f}"
    )


if __name__ == "__main__":
    main()
