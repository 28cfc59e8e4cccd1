"""The jitted training and evaluation steps over a device mesh, T5X style.

A batch is `{task: features}` with one entry per task the mode trains on (`label`, and
`rationale` in dsbs mode), each task's features as SeqIO's `EncDecFeatureConverter` makes
them (packed or not). The step computes every task's summed token loss over the whole
batch, in microbatches when asked, and blends them (`losses.blend`): the per-task token
means weighted by `alpha`, exactly as one pass over the full batch would.

Parameters and optimiser state are placed by their logical axes (`partitioning`), batches
by `batch`; the state is donated, so a step updates it in place. Imports no TensorFlow.
"""

import contextlib
import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from dsbs_jax import losses, partitioning
from dsbs_jax.models import T5, T5Config
from dsbs_jax.optimizers import Optimizer

Params = Any
Batch = Mapping[str, Mapping[str, jax.Array]]
MODEL_INPUTS = (
    "encoder_input_tokens",
    "decoder_input_tokens",
    "encoder_segment_ids",
    "decoder_segment_ids",
    "encoder_positions",
    "decoder_positions",
)


@struct.dataclass
class TrainState:
    """Everything a step changes, and all a checkpoint needs to continue exactly."""

    step: jax.Array
    params: Params
    opt_state: optax.OptState
    rng: jax.Array  # the run's base key; a step's dropout key is folded from it and the step


@dataclasses.dataclass(frozen=True)
class LossOptions:
    """T5X's loss options. `loss_normalizing_factor` None divides each task's summed loss
    by its number of target tokens (the reference's mean); a number divides by it instead."""

    label_smoothing: float = 0.0
    z_loss: float = 0.0
    loss_normalizing_factor: float | None = None


class Trainer:
    """The model, the optimiser and the mesh, with jitted `train_step` and `eval_step`."""

    def __init__(
        self,
        config: T5Config,
        optimizer: Optimizer,
        mesh: Mesh,
        task_weights: Mapping[str, float],
        loss_options: LossOptions = LossOptions(),
        num_microbatches: int = 1,
    ):
        self.config = config
        self.model = T5(config)
        self.optimizer = optimizer
        self.mesh = mesh
        self.task_weights = dict(task_weights)
        self.loss_options = loss_options
        self.num_microbatches = num_microbatches
        boxed = jax.eval_shape(self._init_boxed, jax.random.key(0))
        self.params_sharding = partitioning.logical_shardings(mesh, boxed)
        abstract_params = nn.meta.unbox(boxed)
        self.abstract_state = jax.eval_shape(self._new_state, abstract_params, jax.random.key(0))
        self.state_sharding = self._state_sharding(self.abstract_state)
        batch_sharding = partitioning.batch_sharding(mesh)
        self.train_step = jax.jit(
            self._train_step,
            in_shardings=(self.state_sharding, batch_sharding),
            out_shardings=(self.state_sharding, None),
            donate_argnums=0,
        )
        self._compiled: jax.stages.Compiled | None = None
        self.eval_step = jax.jit(
            self._eval_sums, in_shardings=(self.params_sharding, batch_sharding)
        )

    # -- state --------------------------------------------------------------------------

    def _init_boxed(self, key: jax.Array) -> Params:
        tokens = jnp.ones((1, 1), jnp.int32)
        return self.model.init(key, tokens, tokens)["params"]

    def _new_state(self, params: Params, rng: jax.Array) -> TrainState:
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=self.optimizer.transform.init(params),
            rng=jax.random.key_data(rng),
        )

    def _state_sharding(self, abstract_state: TrainState) -> TrainState:
        """Optimiser moments shaped like a parameter are placed like it; the rest (counts,
        Adafactor's factored rows and columns) is small and replicated."""
        replicated = NamedSharding(self.mesh, PartitionSpec())

        def like_param(leaf, param_sharding, param):
            matches = isinstance(leaf, jax.ShapeDtypeStruct) and leaf.shape == param.shape
            return param_sharding if matches else replicated

        opt_sharding = optax.tree_map_params(
            self.optimizer.transform,
            like_param,
            abstract_state.opt_state,
            self.params_sharding,
            abstract_state.params,
            transform_non_params=lambda _: replicated,
        )
        return TrainState(
            step=replicated, params=self.params_sharding, opt_state=opt_sharding, rng=replicated
        )

    def create_state(self, seed: int, params: Params | None = None) -> TrainState:
        """A fresh state on the mesh: `params` (from a checkpoint) or a random init."""
        rng = jax.random.key(seed)

        def create(params):
            if params is None:
                params = nn.meta.unbox(self._init_boxed(jax.random.fold_in(rng, 1)))
            return self._new_state(params, rng)

        in_shardings = (None,) if params is None else (self.params_sharding,)
        if params is not None:
            params = partitioning.place(params, self.params_sharding)
        with self.scope():
            return jax.jit(create, in_shardings=in_shardings, out_shardings=self.state_sharding)(
                params
            )

    # -- steps --------------------------------------------------------------------------

    @contextlib.contextmanager
    def scope(self):
        """Tracing context: the mesh, and T5X's rules for the model's activation names."""
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(partitioning.LOGICAL_AXIS_RULES):
            yield

    def _task_sums(
        self, params: Params, features: Mapping[str, jax.Array], dropout_rng: jax.Array | None
    ) -> tuple[jax.Array, jax.Array]:
        inputs = {name: features[name] for name in MODEL_INPUTS if name in features}
        rngs = {"dropout": dropout_rng} if dropout_rng is not None else {}
        logits = self.model.apply(
            {"params": params}, **inputs, enable_dropout=dropout_rng is not None, rngs=rngs
        )
        return losses.cross_entropy_sums(
            logits,
            features["decoder_target_tokens"],
            features["decoder_loss_weights"],
            self.loss_options.label_smoothing,
            self.loss_options.z_loss,
        )

    def _normalizers(self, batch: Batch) -> dict[str, jax.Array]:
        factor = self.loss_options.loss_normalizing_factor
        return {
            task: jnp.asarray(factor, jnp.float32)
            if factor is not None
            else jnp.maximum(jnp.sum(batch[task]["decoder_loss_weights"].astype(jnp.float32)), 1)
            for task in self.task_weights
        }

    def _microbatch_loss(self, params, microbatch, normalizers, dropout_rng):
        sums, tokens = {}, {}
        for index, task in enumerate(self.task_weights):
            rng = None if dropout_rng is None else jax.random.fold_in(dropout_rng, index)
            sums[task], tokens[task] = self._task_sums(params, microbatch[task], rng)
        return losses.blend(sums, normalizers, self.task_weights), (sums, tokens)

    def _microbatches(self, batch: Batch) -> Batch:
        """`[M, B/M, ...]` with microbatch i taking rows i, i+M, ...: every device keeps
        an equal share of every microbatch, so accumulation stays data-parallel."""
        m = self.num_microbatches
        rows = {len(x) for x in jax.tree.leaves(batch)}
        if any(r % m for r in rows):
            raise ValueError(f"a batch of {rows} rows does not split into {m} microbatches")
        sharding = NamedSharding(self.mesh, PartitionSpec(None, partitioning.DATA))

        def split(x):
            x = x.reshape(x.shape[0] // m, m, *x.shape[1:]).swapaxes(0, 1)
            return jax.lax.with_sharding_constraint(x, sharding)

        return jax.tree.map(split, {task: batch[task] for task in self.task_weights})

    def _gradients(self, params: Params, batch: Batch, normalizers, step_rng: jax.Array):
        """Blended loss, per-task (sums, tokens) and gradients of the whole batch: in one
        pass, or summed over microbatches by `lax.scan` (microbatch i uses dropout key i)."""
        grad_fn = jax.value_and_grad(self._microbatch_loss, has_aux=True)
        use_dropout = self.config.dropout_rate > 0

        def microbatch_gradients(index, microbatch):
            rng = jax.random.fold_in(step_rng, index) if use_dropout else None
            (loss, aux), grads = grad_fn(params, microbatch, normalizers, rng)
            return loss, aux, grads

        if self.num_microbatches == 1:
            return microbatch_gradients(0, {task: batch[task] for task in self.task_weights})

        def accumulate(carry, indexed):
            return jax.tree.map(jnp.add, carry, microbatch_gradients(*indexed)), None

        zeros = jax.tree.map(jnp.zeros_like, params)
        tasks = {task: jnp.zeros((), jnp.float32) for task in self.task_weights}
        init = (jnp.zeros((), jnp.float32), (tasks, tasks), zeros)
        indices = jnp.arange(self.num_microbatches)
        totals, _ = jax.lax.scan(accumulate, init, (indices, self._microbatches(batch)))
        return totals

    def _train_step(self, state: TrainState, batch: Batch) -> tuple[TrainState, dict]:
        step_rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        normalizers = self._normalizers(batch)
        loss, (sums, tokens), grads = self._gradients(state.params, batch, normalizers, step_rng)
        updates, opt_state = self.optimizer.transform.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {
            "loss": loss,
            "grad_norm": optax.tree.norm(grads),
            "param_norm": optax.tree.norm(params),
            "learning_rate": self.optimizer.learning_rate(state.step),
            **{f"loss/{task}": sums[task] / normalizers[task] for task in sums},
            **{f"tokens/{task}": tokens[task] for task in tokens},
        }
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
        return new_state, metrics

    def _eval_sums(self, params: Params, batch: Batch) -> dict[str, tuple[jax.Array, jax.Array]]:
        """Teacher-forced summed loss and token count per task (no dropout)."""
        return {task: self._task_sums(params, batch[task], None) for task in batch}

    def compiled_train_step(self, state: TrainState, batch: Batch) -> jax.stages.Compiled:
        """The step compiled for these shapes (arrays or `jax.ShapeDtypeStruct`s), once:
        every batch of a run has the same shapes, and the FLOP count reads the same
        executable instead of compiling a second one."""
        if self._compiled is None:
            with self.scope():
                self._compiled = self.train_step.lower(state, batch).compile()
        return self._compiled

    def run_train_step(self, state: TrainState, batch: Batch) -> tuple[TrainState, dict]:
        """One optimiser step on a global batch (see `partitioning.global_batch`)."""
        return self.compiled_train_step(state, batch)(state, batch)

    def flops_per_step(self, state: TrainState, batch: Batch) -> float | None:
        """XLA's count of one device's floating-point operations in the step (None if the
        backend gives none). It counts what runs: with remat, recomputed forward passes too."""
        analysis = self.compiled_train_step(state, batch).cost_analysis()
        analysis = analysis[0] if isinstance(analysis, list) else analysis
        return float(analysis["flops"]) if analysis and "flops" in analysis else None

    def run_eval_step(self, params: Params, batch: Batch) -> dict:
        with self.scope():
            return self.eval_step(params, batch)
