"""The jitted training and evaluation steps over a device mesh, T5X style.

A batch is `{task: features}` with one entry per task the mode trains on (`label`, and
`rationale` in dsbs mode), each task's features as SeqIO's `EncDecFeatureConverter` makes
them (packed or not). The step computes every task's summed token loss over the whole
batch, in microbatches when asked, and blends them (`losses.blend`): the per-task token
means weighted by `alpha`, exactly as one pass over the full batch would.

With a `Distillation`, a teacher's terms join the blend: the trainer asks its
`distill.Distiller` for them, and passes an online teacher's parameters to the step as an
extra argument (never part of the state); the hidden-state projections it trains live in
the state (`TrainState.projections`).

Parameters and optimiser state are placed by their logical axes (`partitioning`), batches
by `batch`; the state is donated, so a step updates it in place. Imports no TensorFlow.
"""

import contextlib
import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from dsbs_jax import losses, partitioning
from dsbs_jax.distill import Distillation, Distiller
from dsbs_jax.models import T5, T5Config
from dsbs_jax.models.forward import forward, init_boxed
from dsbs_jax.optimizers import Optimizer

Params = Any
Batch = Mapping[str, Mapping[str, jax.Array]]


@struct.dataclass
class TrainState:
    """Everything a step changes, and all a checkpoint needs to continue exactly."""

    step: jax.Array
    params: Params
    opt_state: optax.OptState
    rng: jax.Array  # the run's base key; a step's dropout key is folded from it and the step
    # The hidden-state loss's learned `[student width, teacher width]` maps, by layer pair
    # ("0", "1", ...): empty unless a `Distillation` compares hidden states of two widths.
    projections: Params = struct.field(default_factory=dict)


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
        distillation: Distillation | None = None,
    ):
        self.config = config
        self.model = T5(config)
        self.optimizer = optimizer
        self.mesh = mesh
        self.task_weights = dict(task_weights)
        self.loss_options = loss_options
        self.num_microbatches = num_microbatches
        self.distiller = (
            Distiller(distillation, config, tuple(self.task_weights), mesh)
            if distillation
            else None
        )
        # An online teacher runs in the step; an offline one is top-k features in the batch.
        self.online = self.distiller is not None and self.distiller.online
        # The blend's weights: the tasks', and beta and gamma for the teacher's terms.
        self.loss_weights = dict(self.task_weights)
        if self.distiller:
            self.loss_weights |= self.distiller.weights
        boxed = jax.eval_shape(functools.partial(init_boxed, self.model), jax.random.key(0))
        self.params_sharding = partitioning.logical_shardings(mesh, boxed)
        abstract_params = nn.meta.unbox(boxed)
        self.abstract_state = jax.eval_shape(self._new_state, abstract_params, jax.random.key(0))
        self.state_sharding = self._state_sharding(self.abstract_state)
        batch_sharding = partitioning.batch_sharding(mesh)
        in_shardings = (self.state_sharding, batch_sharding)
        if self.online:
            in_shardings += (self.distiller.teacher_sharding,)
        # With a teacher the step is `train_step(state, batch, teacher_params)`; the
        # teacher's parameters are read, never donated.
        self.train_step = jax.jit(
            self._train_step,
            in_shardings=in_shardings,
            out_shardings=(self.state_sharding, None),
            donate_argnums=0,
        )
        self._compiled: jax.stages.Compiled | None = None
        self.eval_step = jax.jit(
            self._eval_sums, in_shardings=(self.params_sharding, batch_sharding)
        )

    # -- state --------------------------------------------------------------------------

    def _new_state(self, params: Params, rng: jax.Array) -> TrainState:
        key = jax.random.fold_in(rng, 2)
        projections = self.distiller.init_projections(key) if self.distiller else {}
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=self.optimizer.transform.init(trainable(params, projections)),
            rng=jax.random.key_data(rng),
            projections=projections,
        )

    def _state_sharding(self, abstract_state: TrainState) -> TrainState:
        """Optimiser moments shaped like a parameter are placed like it, and Adafactor's
        factored rows and columns (the parameter's shape less one dimension) like the
        dimensions they keep; the rest (counts) is replicated."""
        replicated = NamedSharding(self.mesh, PartitionSpec())

        def like_param(leaf, param_sharding, param):
            if not isinstance(leaf, jax.ShapeDtypeStruct):
                return replicated
            if leaf.shape == param.shape:
                return param_sharding
            spec = tuple(param_sharding.spec) + (None,) * param.ndim
            for dropped in reversed(range(param.ndim if param.ndim > 1 else 0)):
                kept = [d for d in range(param.ndim) if d != dropped]
                if leaf.shape == tuple(param.shape[d] for d in kept):
                    return NamedSharding(self.mesh, PartitionSpec(*(spec[d] for d in kept)))
            return replicated

        projections_sharding = jax.tree.map(lambda _: replicated, abstract_state.projections)
        opt_sharding = optax.tree_map_params(
            self.optimizer.transform,
            like_param,
            abstract_state.opt_state,
            trainable(self.params_sharding, projections_sharding),
            trainable(abstract_state.params, abstract_state.projections),
            transform_non_params=lambda _: replicated,
        )
        return TrainState(
            step=replicated,
            params=self.params_sharding,
            opt_state=opt_sharding,
            rng=replicated,
            projections=projections_sharding,
        )

    def create_state(self, seed: int, params: Params | None = None) -> TrainState:
        """A fresh state on the mesh: `params` (from a checkpoint) or a random init."""
        rng = jax.random.key(seed)

        def create(params):
            if params is None:
                params = nn.meta.unbox(init_boxed(self.model, jax.random.fold_in(rng, 1)))
            return self._new_state(params, rng)

        in_shardings = (None,) if params is None else (self.params_sharding,)
        if params is not None:
            params = partitioning.place(params, self.params_sharding)
        with self.scope():
            return jax.jit(create, in_shardings=in_shardings, out_shardings=self.state_sharding)(
                params
            )

    def _teacher_args(self, teacher_params: Params | None) -> tuple:
        """The step's arguments after the batch: the teacher's parameters, if it has one."""
        if self.online != (teacher_params is not None):
            raise ValueError(
                "pass teacher_params exactly when the trainer has an online `distillation` teacher"
            )
        return () if teacher_params is None else (teacher_params,)

    # -- steps --------------------------------------------------------------------------

    @contextlib.contextmanager
    def scope(self):
        """Tracing context: the mesh, and T5X's rules for the model's activation names."""
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(partitioning.LOGICAL_AXIS_RULES):
            yield

    def _task_sums(
        self, logits: jax.Array, features: Mapping[str, jax.Array]
    ) -> tuple[jax.Array, jax.Array]:
        return losses.cross_entropy_sums(
            logits,
            features["decoder_target_tokens"],
            features["decoder_loss_weights"],
            self.loss_options.label_smoothing,
            self.loss_options.z_loss,
        )

    def _normalizers(self, batch: Batch) -> dict[str, jax.Array]:
        """Each term's divisor over the whole batch: its tokens (a task's target tokens; the
        distiller's terms count their own), or T5X's fixed `loss_normalizing_factor` for
        every term."""
        factor = self.loss_options.loss_normalizing_factor
        normalizers = {
            task: jnp.maximum(jnp.sum(batch[task]["decoder_loss_weights"].astype(jnp.float32)), 1)
            for task in self.task_weights
        }
        if self.distiller:
            normalizers |= self.distiller.tokens(batch)
        if factor is not None:
            return {term: jnp.asarray(factor, jnp.float32) for term in normalizers}
        return normalizers

    def _microbatch_loss(
        self, trained, microbatch, teacher_outputs, normalizers, dropout_rng
    ) -> tuple[jax.Array, tuple[dict, dict]]:
        params, projections = trained
        sums = {term: jnp.zeros((), jnp.float32) for term in self.loss_weights}
        tokens = dict(sums)

        def add(term, sum_and_tokens):
            sums[term], tokens[term] = (
                sums[term] + sum_and_tokens[0],
                tokens[term] + sum_and_tokens[1],
            )

        for index, task in enumerate(self.task_weights):
            rng = None if dropout_rng is None else jax.random.fold_in(dropout_rng, index)
            features = microbatch[task]
            layers = self.distiller.student_layers(task) if self.distiller else ()
            logits, hidden = forward(self.model, params, features, rng, layers)
            add(task, self._task_sums(logits, features))
            if self.distiller:
                terms = self.distiller.sums(
                    task, logits, hidden, features, teacher_outputs.get(task), projections
                )
                for term, sum_and_tokens in terms:
                    add(term, sum_and_tokens)
        return losses.blend(sums, normalizers, self.loss_weights), (sums, tokens)

    def _microbatches(self, batch: Batch) -> Batch:
        """`[M, B/M, ...]` with microbatch i taking rows i, i+M, ...: every device keeps
        an equal share of every microbatch, so accumulation stays data-parallel."""
        m = self.num_microbatches
        rows = {len(x) for x in jax.tree.leaves(batch)}
        if any(r % m for r in rows):
            raise ValueError(f"a batch of {rows} rows does not split into {m} microbatches")
        sharding = NamedSharding(self.mesh, PartitionSpec(None, partitioning.BATCH_AXES))

        def split(x):
            x = x.reshape(x.shape[0] // m, m, *x.shape[1:]).swapaxes(0, 1)
            return jax.lax.with_sharding_constraint(x, sharding)

        return jax.tree.map(split, {task: batch[task] for task in self.task_weights})

    def _gradients(
        self, trained: tuple, batch: Batch, teacher_params, normalizers, step_rng: jax.Array
    ):
        """Blended loss, per-term (sums, tokens) and gradients of the whole batch with
        respect to `trained` (params, projections): in one pass, or summed over
        microbatches by `lax.scan` (microbatch i uses dropout key i). The teacher runs on
        each microbatch outside the differentiated function."""
        grad_fn = jax.value_and_grad(self._microbatch_loss, has_aux=True)
        use_dropout = self.config.dropout_rate > 0

        def microbatch_gradients(index, microbatch):
            rng = jax.random.fold_in(step_rng, index) if use_dropout else None
            teacher_outputs = (
                self.distiller.teacher_outputs(teacher_params, microbatch) if self.online else {}
            )
            (loss, aux), grads = grad_fn(trained, microbatch, teacher_outputs, normalizers, rng)
            return loss, aux, grads

        if self.num_microbatches == 1:
            return microbatch_gradients(0, {task: batch[task] for task in self.task_weights})

        def accumulate(carry, indexed):
            return jax.tree.map(jnp.add, carry, microbatch_gradients(*indexed)), None

        zeros = jax.tree.map(jnp.zeros_like, trained)
        terms = {term: jnp.zeros((), jnp.float32) for term in self.loss_weights}
        init = (jnp.zeros((), jnp.float32), (terms, terms), zeros)
        indices = jnp.arange(self.num_microbatches)
        totals, _ = jax.lax.scan(accumulate, init, (indices, self._microbatches(batch)))
        return totals

    def _train_step(
        self, state: TrainState, batch: Batch, teacher_params: Params | None = None
    ) -> tuple[TrainState, dict]:
        step_rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
        normalizers = self._normalizers(batch)
        loss, (sums, tokens), grads = self._gradients(
            (state.params, state.projections), batch, teacher_params, normalizers, step_rng
        )
        grads, before = trainable(*grads), trainable(state.params, state.projections)
        updates, opt_state = self.optimizer.transform.update(grads, state.opt_state, before)
        params, projections = from_trainable(
            optax.apply_updates(before, updates), state.projections
        )
        metrics = {
            "loss": loss,
            "grad_norm": optax.tree.norm(grads),
            "param_norm": optax.tree.norm(params),
            "learning_rate": self.optimizer.learning_rate(state.step),
            **{f"loss/{term}": sums[term] / normalizers[term] for term in sums},
            **{f"tokens/{term}": tokens[term] for term in tokens},
        }
        new_state = state.replace(
            step=state.step + 1, params=params, opt_state=opt_state, projections=projections
        )
        return new_state, metrics

    def _eval_sums(self, params: Params, batch: Batch) -> dict[str, tuple[jax.Array, jax.Array]]:
        """Teacher-forced summed loss and token count per task (no dropout)."""
        return {
            task: self._task_sums(forward(self.model, params, batch[task])[0], batch[task])
            for task in batch
        }

    def compiled_train_step(
        self, state: TrainState, batch: Batch, teacher_params: Params | None = None
    ) -> jax.stages.Compiled:
        """The step compiled for these shapes (arrays or `jax.ShapeDtypeStruct`s, e.g.
        `distiller.abstract_teacher_params`), once: every batch of a run has the same
        shapes, and the FLOP count reads the same executable instead of compiling again."""
        if self._compiled is None:
            args = (state, batch, *self._teacher_args(teacher_params))
            with self.scope():
                self._compiled = self.train_step.lower(*args).compile()
        return self._compiled

    def run_train_step(
        self, state: TrainState, batch: Batch, teacher_params: Params | None = None
    ) -> tuple[TrainState, dict]:
        """One optimiser step on a global batch (see `partitioning.global_batch`), with the
        teacher's parameters (`distiller.place_teacher`) when the trainer distils."""
        args = (state, batch, *self._teacher_args(teacher_params))
        return self.compiled_train_step(*args)(*args)

    def flops_per_step(
        self, state: TrainState, batch: Batch, teacher_params: Params | None = None
    ) -> float | None:
        """XLA's count of one device's floating-point operations in the step (None if the
        backend gives none). It counts what runs: with remat, recomputed forward passes too,
        and the teacher's forward pass when there is one."""
        analysis = self.compiled_train_step(state, batch, teacher_params).cost_analysis()
        analysis = analysis[0] if isinstance(analysis, list) else analysis
        return float(analysis["flops"]) if analysis and "flops" in analysis else None

    def run_eval_step(self, params: Params, batch: Batch) -> dict:
        with self.scope():
            return self.eval_step(params, batch)


def trainable(params: Params, projections: Params) -> Params:
    """The tree the optimiser updates: the student's parameters, with the projections
    beside them when there are any (so a run without them keeps its optimiser state's
    layout)."""
    return {"student": params, "projections": projections} if projections else params


def from_trainable(tree: Params, projections: Params) -> tuple[Params, Params]:
    """`trainable`'s inverse, for a state with these `projections`: (params, projections)."""
    return (tree["student"], tree["projections"]) if projections else (tree, {})
