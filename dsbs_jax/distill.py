"""Distillation from a teacher: what to distil (`Distillation`), and the teacher's place in
the training step (`Distiller`): its parameters' placement, its forward pass, and its terms
in the loss. The trainer calls a `Distiller` as T5X's trainer calls a model's loss, and
knows nothing of teachers beyond those calls.

A frozen same-family teacher runs inside the step on the same microbatches as the student
(teacher-forced, no dropout): the token KL between its distribution and the student's joins
the blend as `beta * kd` (`losses.kl_sums`), and the distance between chosen layers' hidden
states as `gamma * hidden` (`losses.hidden_state_sums`, through learned projections when
the widths differ). Its parameters are an extra argument of the step, never updated, never
checkpointed with the student, reloaded from their own checkpoint on resumption. The
projections are trained with the student and live in its state. An offline teacher is its
top-k log-probabilities, carried by the batches (`TOPK_IDS`, `TOPK_LOGPROBS`, written by
`dsbs_jax.data.topk_store`). Imports no TensorFlow.
"""

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from dsbs_jax import checkpoints, losses, partitioning
from dsbs_jax.models import T5, T5Config
from dsbs_jax.models.forward import forward, init_boxed

Params = Any
Features = Mapping[str, jax.Array]
# The distillation terms' names in the blend, the metrics and the sums.
KD, HIDDEN = "kd", "hidden"
SIDES = ("encoder", "decoder")
# An offline teacher's features, per target token.
TOPK_IDS, TOPK_LOGPROBS = "teacher_topk_ids", "teacher_topk_logprobs"


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
    (`losses.topk_kl_sums`, features `TOPK_IDS` and `TOPK_LOGPROBS` from a `topk_store`);
    it has no hidden states to compare.
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


def hidden_weights(features: Features, side: str) -> jax.Array:
    """Where a side's hidden states count: the input tokens, or the targets' loss weights."""
    if side == "encoder":
        return (features["encoder_input_tokens"] > 0).astype(jnp.float32)
    return features["decoder_loss_weights"]


class Distiller:
    """A `Distillation` of `student` on a mesh, for a step that trains `tasks`: the terms
    it adds to the blend (`weights`), the student layers it reads, the teacher's
    parameters' placement and forward pass (online), and each term's sums."""

    def __init__(
        self, distillation: Distillation, student: T5Config, tasks: Sequence[str], mesh: Mesh
    ):
        self.distillation = distillation
        self.student = student
        # An online teacher runs in the step; an offline one is top-k features in the batch.
        self.online = distillation.teacher_config is not None
        self.tasks = self._distilled_tasks(tuple(tasks))
        self.hidden_pairs = distillation.hidden_pairs(student)
        self.weights = {}
        if distillation.weight:
            self.weights[KD] = distillation.weight
        if self.hidden_pairs:
            self.weights[HIDDEN] = distillation.hidden_weight
        if self.online:
            self._init_teacher(mesh)

    def _distilled_tasks(self, trained: tuple[str, ...]) -> tuple[str, ...]:
        """The tasks whose targets the KL covers; checks an online teacher's vocabulary (an
        offline one's is its store's to check)."""
        teacher = self.distillation.teacher_config
        if self.online and teacher.vocab_size != self.student.vocab_size:
            raise ValueError(
                f"the teacher's vocabulary has {teacher.vocab_size} tokens, the student's "
                f"{self.student.vocab_size}: logit distillation needs a teacher with the "
                "student's vocabulary"
            )
        tasks = trained if self.distillation.tasks is None else self.distillation.tasks
        unknown = [task for task in tasks if task not in trained]
        if not tasks or unknown or len(set(tasks)) != len(tasks):
            raise ValueError(
                f"distillation tasks {tasks} must be distinct tasks the mode trains on: "
                f"{', '.join(trained)}"
            )
        return tasks

    # -- the teacher's parameters -------------------------------------------------------

    def _init_teacher(self, mesh: Mesh) -> None:
        """The teacher model, placed by its own logical axes under the same rules."""
        self.teacher_config = dataclasses.replace(
            self.distillation.teacher_config,
            dtype=self.distillation.dtype,
            dropout_rate=0.0,
            remat=False,
        )
        self.teacher_model = T5(self.teacher_config)
        boxed = jax.eval_shape(functools.partial(init_boxed, self.teacher_model), jax.random.key(0))
        self.teacher_sharding = partitioning.logical_shardings(mesh, boxed)
        dtype = self.teacher_config.activation_dtype
        self.abstract_teacher_params = partitioning.abstract_arrays(
            jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, dtype), nn.meta.unbox(boxed)),
            self.teacher_sharding,
        )

    def place_teacher(self, params: Params) -> Params:
        """The teacher's parameters (host arrays every host holds whole, as
        `checkpoints.load` returns them) checked against its config, cast to the teacher's
        dtype and placed on the mesh: the third argument of the training step."""
        if not self.online:
            raise ValueError("an offline distillation (top-k features) has no teacher to place")
        checkpoints.check_params(self.teacher_config, params, "teacher")
        dtype = self.teacher_config.activation_dtype
        params = jax.tree.map(lambda x: np.asarray(x).astype(dtype), params)
        return partitioning.place(params, self.teacher_sharding)

    def init_projections(self, key: jax.Array) -> Params:
        """One projection per hidden layer pair when the widths differ, else none."""
        if not self.hidden_pairs:
            return {}
        widths = self.student.emb_dim, self.distillation.teacher_config.emb_dim
        if widths[0] == widths[1]:
            return {}
        return {
            str(i): losses.init_projection(jax.random.fold_in(key, i), *widths)
            for i in range(len(self.hidden_pairs))
        }

    # -- in the step ----------------------------------------------------------------------

    def student_layers(self, task: str) -> tuple[tuple[str, int], ...]:
        """The student layers whose outputs a task's terms compare."""
        return tuple(student for student, _ in self.hidden_pairs) if task in self.tasks else ()

    def teacher_outputs(self, teacher_params: Params | None, microbatch: Mapping) -> dict:
        """The teacher's logits and chosen layers' outputs on each distilled task's
        microbatch: constants of the step (none for an offline teacher)."""
        if teacher_params is None:
            return {}
        layers = tuple(teacher for _, teacher in self.hidden_pairs)
        return {
            task: jax.lax.stop_gradient(
                forward(self.teacher_model, teacher_params, microbatch[task], None, layers)
            )
            for task in self.tasks
        }

    def sums(
        self,
        task: str,
        logits: jax.Array,
        hidden: Sequence[jax.Array],
        features: Features,
        teacher_outputs: tuple | None,
        projections: Params,
    ) -> list[tuple[str, tuple[jax.Array, jax.Array]]]:
        """`(term, (sum, tokens))` of each distillation term on one task's (micro)batch,
        from the student's logits and `student_layers(task)` outputs."""
        if task not in self.tasks:
            return []
        distillation = self.distillation
        if not self.online:
            topk = (features[TOPK_IDS], features[TOPK_LOGPROBS])
            kl = losses.topk_kl_sums(
                logits,
                *topk,
                features["decoder_loss_weights"],
                distillation.temperature,
                distillation.direction,
            )
            return [(KD, kl)]
        teacher_logits, teacher_hidden = teacher_outputs
        terms = []
        if KD in self.weights:
            kl = losses.kl_sums(
                logits,
                teacher_logits,
                features["decoder_loss_weights"],
                distillation.temperature,
                distillation.direction,
            )
            terms.append((KD, kl))
        for pair, ((side, _), _) in enumerate(self.hidden_pairs):
            distance = losses.hidden_state_sums(
                hidden[pair],
                teacher_hidden[pair],
                hidden_weights(features, side),
                distillation.hidden_kind,
                projections.get(str(pair)),
            )
            terms.append((HIDDEN, distance))
        return terms

    def tokens(self, batch: Mapping[str, Features]) -> dict[str, jax.Array]:
        """Each term's divisor over the whole batch: the KL's, the target tokens of all its
        tasks; the hidden term's, those of every layer pair's side in them."""
        result = {}
        if KD in self.weights:
            weights = [
                jnp.sum(batch[t]["decoder_loss_weights"].astype(jnp.float32)) for t in self.tasks
            ]
            result[KD] = jnp.maximum(sum(weights), 1)
        if HIDDEN in self.weights:
            sides = [side for (side, _), _ in self.hidden_pairs]
            sums = [jnp.sum(hidden_weights(batch[t], s)) for t in self.tasks for s in sides]
            result[HIDDEN] = jnp.maximum(sum(sums), 1)
        return result
