"""The jitted training and evaluation steps over a device mesh, T5X style.

A batch is `{task: features}` with one entry per task the mode trains on (`label`, and
`rationale` in dsbs mode), each task's features as SeqIO's `EncDecFeatureConverter` makes
them (packed or not). The step computes every task's summed token loss over the whole
batch, in microbatches when asked, and blends them (`losses.blend`): the per-task token
means weighted by `alpha`, exactly as one pass over the full batch would.

With a `Distillation`, a frozen same-family teacher runs inside the step on the same
microbatches (teacher-forced, no dropout): the token KL between its distribution and the
student's joins the blend as `beta * kd` (`losses.kl_sums`), and the distance between
chosen layers' hidden states as `gamma * hidden` (`losses.hidden_state_sums`, through
learned projections when the widths differ). The teacher's parameters are an extra argument
of the step, not part of the state: never updated, never checkpointed with the student,
reloaded from their own checkpoint on resumption. The projections are trained with the
student and live in the state (`TrainState.projections`).

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
import numpy as np
import optax
from flax import struct
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from dsbs_jax import checkpoints, losses, partitioning
from dsbs_jax.models import T5, T5Config
from dsbs_jax.optimizers import Optimizer

Params = Any
Batch = Mapping[str, Mapping[str, jax.Array]]
# What the model reads of a task's features. Packed rows' positions are left out on
# purpose: T5 uses positions only in its relative attention bias, through the distance
# between two tokens of the same segment, which the columns of a row give as well (a
# segment's tokens are consecutive and cross-segment pairs are masked). Without them the
# bias is one `[heads, q, k]` table for all rows instead of one per row, a large part of a
# packed step's attention cost (`tests/test_packing.py` checks a packed step equals the
# padded one).
MODEL_INPUTS = (
    "encoder_input_tokens",
    "decoder_input_tokens",
    "encoder_segment_ids",
    "decoder_segment_ids",
)
# The distillation terms' names in the blend, the metrics and the sums.
KD, HIDDEN = "kd", "hidden"
SIDES = ("encoder", "decoder")
# An offline teacher's features (`dsbs_jax.data.topk_store` writes them; no TF import here).
TOPK_IDS, TOPK_LOGPROBS = "teacher_topk_ids", "teacher_topk_logprobs"


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


@dataclasses.dataclass(frozen=True)
class Distillation:
    """Distillation from a teacher: `loss = ... + weight * kd + hidden_weight * hidden`.

    `kd` is the token mean of `T^2 * KL` (`losses.kl_sums`, `direction` forward:
    KL(teacher || student)) over the targets of `tasks` (None: every task the mode trains
    on). `hidden` is the token mean, over the same tasks and over `hidden_layers`, of the
    `hidden_kind` distance (`losses.hidden_state_sums`: mse or cosine) between the outputs
    of a student layer and a teacher layer, each named `"encoder:i"` or `"decoder:i"` (i
    counts from 0; negative from the last layer); encoder states count on the input tokens,
    decoder states on the targets. The teacher must share the student's vocabulary. It runs
    with activations and parameters in `dtype`: bfloat16 halves its memory; float32 is for
    CPUs and for exact comparisons.

    `teacher_config` None is an offline teacher: no model in the step, the KL computed over
    the teacher's top-k tokens that the distilled tasks' batches carry
    (`losses.topk_kl_sums`, features `teacher_topk_ids` and `teacher_topk_logprobs` from a
    `topk_store`); it has no hidden states to compare.
    """

    teacher_config: T5Config | None
    weight: float
    temperature: float = 1.0
    direction: str = "forward"
    tasks: tuple[str, ...] | None = None
    dtype: str = "bfloat16"
    hidden_weight: float = 0.0
    hidden_layers: tuple[tuple[str, str], ...] = (("decoder:-1", "decoder:-1"),)
    hidden_kind: str = "mse"

    def __post_init__(self):
        losses.check_kl_options(self.temperature, self.direction)
        losses.check_hidden_kind(self.hidden_kind)
        for name, value in (("weight (beta)", self.weight), ("hidden_weight", self.hidden_weight)):
            if not value >= 0:
                raise ValueError(f"the distillation {name} must be >= 0, got {value}")
        if self.weight == 0 and self.hidden_weight == 0:
            raise ValueError("a distillation needs weight (beta) > 0 or hidden_weight > 0")
        if self.hidden_weight and self.teacher_config is None:
            raise ValueError("hidden_weight > 0 needs an online teacher (a teacher_config)")
        if self.hidden_weight and not self.hidden_layers:
            raise ValueError("hidden_weight > 0 needs hidden_layers: (student, teacher) pairs")
        for student, teacher in self.hidden_layers:
            if layer_spec(student)[0] != layer_spec(teacher)[0]:
                raise ValueError(
                    f"hidden layers {student!r} and {teacher!r} are on different sides: an "
                    "encoder's states are compared with the teacher's encoder's, a decoder's "
                    "with its decoder's"
                )

    def hidden_pairs(self, student: T5Config) -> list[tuple[tuple[str, int], tuple[str, int]]]:
        """`hidden_layers` as ((side, index), (side, index)) pairs, indices made
        non-negative and checked against the student's and the teacher's depths."""
        if not self.hidden_weight:
            return []
        return [
            (layer_spec(s, student, "student"), layer_spec(t, self.teacher_config, "teacher"))
            for s, t in self.hidden_layers
        ]


def layer_spec(spec: str, config: T5Config | None = None, model: str = "model") -> tuple[str, int]:
    """`"decoder:-1"` -> `("decoder", -1)`; with a config, the index made non-negative and
    checked against that side's number of layers."""
    side, _, index = spec.partition(":")
    try:
        number = int(index)
    except ValueError:
        number = None
    if side not in SIDES or number is None:
        raise ValueError(
            f"hidden layer {spec!r} must be 'encoder:i' or 'decoder:i' with i an integer"
        )
    if config is None:
        return side, number
    depth = config.num_encoder_layers if side == "encoder" else config.num_decoder_layers
    if not -depth <= number < depth:
        raise ValueError(
            f"hidden layer {spec!r}: the {model}'s {side} has layers 0 to {depth - 1} "
            f"(or -{depth} to -1)"
        )
    return side, number % depth


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
        self.distillation = distillation
        # An online teacher runs in the step; an offline one is top-k features in the batch.
        self.online = distillation is not None and distillation.teacher_config is not None
        self.kd_tasks = self._kd_tasks(distillation)
        self.hidden_pairs = distillation.hidden_pairs(config) if distillation else []
        # The blend's weights: the tasks', and beta and gamma for the teacher's terms.
        self.loss_weights = dict(self.task_weights)
        if distillation and distillation.weight:
            self.loss_weights[KD] = distillation.weight
        if self.hidden_pairs:
            self.loss_weights[HIDDEN] = distillation.hidden_weight
        boxed = jax.eval_shape(functools.partial(self._init_boxed, self.model), jax.random.key(0))
        self.params_sharding = partitioning.logical_shardings(mesh, boxed)
        abstract_params = nn.meta.unbox(boxed)
        self.abstract_state = jax.eval_shape(self._new_state, abstract_params, jax.random.key(0))
        self.state_sharding = self._state_sharding(self.abstract_state)
        batch_sharding = partitioning.batch_sharding(mesh)
        in_shardings = (self.state_sharding, batch_sharding)
        if self.online:
            self._init_teacher(distillation)
            in_shardings += (self.teacher_sharding,)
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

    @staticmethod
    def _init_boxed(model: T5, key: jax.Array) -> Params:
        tokens = jnp.ones((1, 1), jnp.int32)
        return model.init(key, tokens, tokens)["params"]

    def _new_state(self, params: Params, rng: jax.Array) -> TrainState:
        projections = self._init_projections(jax.random.fold_in(rng, 2))
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=self.optimizer.transform.init(trainable(params, projections)),
            rng=jax.random.key_data(rng),
            projections=projections,
        )

    def _init_projections(self, key: jax.Array) -> Params:
        """One projection per hidden layer pair when the widths differ, else none."""
        if not self.hidden_pairs:
            return {}
        widths = self.config.emb_dim, self.distillation.teacher_config.emb_dim
        if widths[0] == widths[1]:
            return {}
        return {
            str(i): losses.init_projection(jax.random.fold_in(key, i), *widths)
            for i in range(len(self.hidden_pairs))
        }

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
                params = nn.meta.unbox(self._init_boxed(self.model, jax.random.fold_in(rng, 1)))
            return self._new_state(params, rng)

        in_shardings = (None,) if params is None else (self.params_sharding,)
        if params is not None:
            params = partitioning.place(params, self.params_sharding)
        with self.scope():
            return jax.jit(create, in_shardings=in_shardings, out_shardings=self.state_sharding)(
                params
            )

    # -- teacher ------------------------------------------------------------------------

    def _kd_tasks(self, distillation: Distillation | None) -> tuple[str, ...]:
        """The tasks whose targets the KL covers; checks an online teacher's vocabulary (an
        offline one's is its store's to check)."""
        if distillation is None:
            return ()
        if self.online and distillation.teacher_config.vocab_size != self.config.vocab_size:
            raise ValueError(
                f"the teacher's vocabulary has {distillation.teacher_config.vocab_size} tokens, "
                f"the student's {self.config.vocab_size}: logit distillation needs a teacher "
                "with the student's vocabulary"
            )
        tasks = tuple(self.task_weights) if distillation.tasks is None else distillation.tasks
        unknown = [task for task in tasks if task not in self.task_weights]
        if not tasks or unknown or len(set(tasks)) != len(tasks):
            raise ValueError(
                f"distillation tasks {tasks} must be distinct tasks the mode trains on: "
                f"{', '.join(self.task_weights)}"
            )
        return tasks

    def _init_teacher(self, distillation: Distillation) -> None:
        """The teacher model, placed by its own logical axes under the same rules."""
        self.teacher_config = dataclasses.replace(
            distillation.teacher_config, dtype=distillation.dtype, dropout_rate=0.0, remat=False
        )
        self.teacher_model = T5(self.teacher_config)
        boxed = jax.eval_shape(
            functools.partial(self._init_boxed, self.teacher_model), jax.random.key(0)
        )
        self.teacher_sharding = partitioning.logical_shardings(self.mesh, boxed)
        dtype = self.teacher_config.activation_dtype
        self.abstract_teacher_params = partitioning.abstract_arrays(
            jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, dtype), nn.meta.unbox(boxed)),
            self.teacher_sharding,
        )

    def place_teacher(self, params: Params) -> Params:
        """The teacher's parameters (host arrays every host holds whole, as
        `checkpoints.load` returns them) checked against its config, cast to the teacher's
        dtype and placed on the mesh: the third argument of `train_step`."""
        if not self.online:
            raise ValueError("this trainer has no online teacher (no `distillation` with a config)")
        checkpoints.check_params(self.teacher_config, params, "teacher")
        dtype = self.teacher_config.activation_dtype
        params = jax.tree.map(lambda x: np.asarray(x).astype(dtype), params)
        return partitioning.place(params, self.teacher_sharding)

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

    @staticmethod
    def _forward(
        model: T5,
        params: Params,
        features: Mapping[str, jax.Array],
        dropout_rng: jax.Array | None = None,
        layers: tuple[tuple[str, int], ...] = (),
    ) -> tuple[jax.Array, list[jax.Array]]:
        """Logits, and the outputs of the (side, index) `layers` (Flax's captured
        intermediates of those layers' calls; the rest are never kept)."""
        inputs = {name: features[name] for name in MODEL_INPUTS if name in features}
        rngs = {"dropout": dropout_rng} if dropout_rng is not None else {}
        variables = {"params": params}
        enable_dropout = dropout_rng is not None
        if not layers:
            return model.apply(variables, **inputs, enable_dropout=enable_dropout, rngs=rngs), []
        wanted = {(side, f"layers_{index}") for side, index in layers}

        def capture(module: nn.Module, method: str) -> bool:
            path = module.scope.path if module.scope else ()
            return method == "__call__" and tuple(path[-2:]) in wanted

        logits, state = model.apply(
            variables,
            **inputs,
            enable_dropout=enable_dropout,
            rngs=rngs,
            capture_intermediates=capture,
            mutable=["intermediates"],
        )
        captured = state["intermediates"]
        return logits, [captured[side][f"layers_{i}"]["__call__"][0] for side, i in layers]

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
        """Each term's divisor over the whole batch: its tokens (the KL's: those of all its
        tasks; the hidden term's: those of every layer pair's side in them), or T5X's fixed
        `loss_normalizing_factor` for every term."""
        factor = self.loss_options.loss_normalizing_factor

        def tokens(tasks):
            weights = [jnp.sum(batch[t]["decoder_loss_weights"].astype(jnp.float32)) for t in tasks]
            return jnp.maximum(sum(weights), 1)

        def hidden_tokens():
            sides = [side for (side, _), _ in self.hidden_pairs]
            sums = [jnp.sum(hidden_weights(batch[t], s)) for t in self.kd_tasks for s in sides]
            return jnp.maximum(sum(sums), 1)

        normalizers = {task: tokens((task,)) for task in self.task_weights}
        if KD in self.loss_weights:
            normalizers[KD] = tokens(self.kd_tasks)
        if HIDDEN in self.loss_weights:
            normalizers[HIDDEN] = hidden_tokens()
        if factor is not None:
            return {term: jnp.asarray(factor, jnp.float32) for term in normalizers}
        return normalizers

    def _teacher_outputs(self, teacher_params: Params | None, microbatch: Batch) -> dict:
        """The teacher's logits and chosen layers' outputs on each distilled task's
        microbatch: constants of the step."""
        if teacher_params is None:
            return {}
        layers = tuple(teacher for _, teacher in self.hidden_pairs)
        return {
            task: jax.lax.stop_gradient(
                self._forward(self.teacher_model, teacher_params, microbatch[task], None, layers)
            )
            for task in self.kd_tasks
        }

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

        layers = tuple(student for student, _ in self.hidden_pairs)
        for index, task in enumerate(self.task_weights):
            rng = None if dropout_rng is None else jax.random.fold_in(dropout_rng, index)
            features = microbatch[task]
            distilled = task in self.kd_tasks
            logits, hidden = self._forward(
                self.model, params, features, rng, layers if distilled else ()
            )
            add(task, self._task_sums(logits, features))
            if not distilled:
                continue
            if not self.online:
                add(KD, self._offline_kl(logits, features))
                continue
            teacher_logits, teacher_hidden = teacher_outputs[task]
            if KD in sums:
                add(
                    KD,
                    losses.kl_sums(
                        logits,
                        teacher_logits,
                        features["decoder_loss_weights"],
                        self.distillation.temperature,
                        self.distillation.direction,
                    ),
                )
            for pair, ((side, _), _) in enumerate(self.hidden_pairs):
                add(
                    HIDDEN,
                    losses.hidden_state_sums(
                        hidden[pair],
                        teacher_hidden[pair],
                        hidden_weights(features, side),
                        self.distillation.hidden_kind,
                        projections.get(str(pair)),
                    ),
                )
        return losses.blend(sums, normalizers, self.loss_weights), (sums, tokens)

    def _offline_kl(self, logits: jax.Array, features: Mapping[str, jax.Array]) -> tuple:
        """The KL over the stored top-k tokens of an offline teacher."""
        return losses.topk_kl_sums(
            logits,
            features[TOPK_IDS],
            features[TOPK_LOGPROBS],
            features["decoder_loss_weights"],
            self.distillation.temperature,
            self.distillation.direction,
        )

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
            teacher_outputs = self._teacher_outputs(teacher_params, microbatch)
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
            task: self._task_sums(self._forward(self.model, params, batch[task])[0], batch[task])
            for task in batch
        }

    def compiled_train_step(
        self, state: TrainState, batch: Batch, teacher_params: Params | None = None
    ) -> jax.stages.Compiled:
        """The step compiled for these shapes (arrays or `jax.ShapeDtypeStruct`s, e.g.
        `abstract_teacher_params`), once: every batch of a run has the same shapes, and the
        FLOP count reads the same executable instead of compiling a second one."""
        if self._compiled is None:
            args = (state, batch, *self._teacher_args(teacher_params))
            with self.scope():
                self._compiled = self.train_step.lower(*args).compile()
        return self._compiled

    def run_train_step(
        self, state: TrainState, batch: Batch, teacher_params: Params | None = None
    ) -> tuple[TrainState, dict]:
        """One optimiser step on a global batch (see `partitioning.global_batch`), with the
        teacher's parameters (`place_teacher`) when the trainer distils."""
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


def hidden_weights(features: Mapping[str, jax.Array], side: str) -> jax.Array:
    """Where a side's hidden states count: the input tokens, or the targets' loss weights."""
    if side == "encoder":
        return (features["encoder_input_tokens"] > 0).astype(jnp.float32)
    return features["decoder_loss_weights"]
