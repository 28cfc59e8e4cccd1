"""The training step compiled ahead of time, and what XLA says of it: memory and FLOPs.

`Trainer.train_step` is lowered with `jax.ShapeDtypeStruct` arguments that carry the
state's and the batch's shardings, so nothing the size of the model is allocated and the
step of an XXL student compiles on a laptop, for this host's devices or for a TPU slice's
compile-only devices (`dsbs_jax.hardware`). `dsbs-fit` and `bench/memory.py` read the
same figures from here.

What a device holds during the step, from `compiled.memory_analysis()`: its arguments
(its shards of the state and the batch, and of the teacher's parameters when one runs in
the step), outputs (the new state, the metrics), temporaries (activations, gradients,
optimiser scratch) and generated code. The state is donated and updated in place, so its
outputs alias its arguments: the total is arguments + outputs + temporaries - aliased.
TPU and GPU compilers also give the peak of their own buffer schedule, which accounts for
buffers that are never live together, and is what a device must hold; XLA's CPU compiler
gives none (its "peak" is just the arguments), so there the total stands in for it.
"""

import dataclasses
from collections.abc import Mapping

import jax
import jax.numpy as jnp

from dsbs_jax import partitioning
from dsbs_jax.trainer import Batch, Params, Trainer

GIB = 2**30
# A padded task's features, as SeqIO's `EncDecFeatureConverter(pack=False)` makes them.
PADDED_FEATURES = (
    "encoder_input_tokens",
    "decoder_input_tokens",
    "decoder_target_tokens",
    "decoder_loss_weights",
)


def padded_batch(shapes: Mapping[str, tuple[int, int, int]]) -> dict:
    """`{task: features}` of `jax.ShapeDtypeStruct`s for `{task: (rows, inputs, targets)}`:
    every example padded to the feature lengths (int32, as the data pipeline gives them)."""
    batch = {}
    for task, (rows, inputs, targets) in shapes.items():
        lengths = dict.fromkeys(PADDED_FEATURES, targets) | {"encoder_input_tokens": inputs}
        batch[task] = {
            name: jax.ShapeDtypeStruct((rows, length), jnp.int32)
            for name, length in lengths.items()
        }
    return batch


def compile_step(
    trainer: Trainer, batch: Batch, teacher_params: Params | None = None
) -> jax.stages.Compiled:
    """The trainer's compiled step for the abstract state, `batch`'s shapes (arrays or
    `ShapeDtypeStruct`s) and, when it distils online, the teacher's parameters
    (`Distiller.abstract_teacher_params`): nothing is allocated."""
    state = partitioning.abstract_arrays(trainer.abstract_state, trainer.state_sharding)
    arrays = partitioning.abstract_arrays(batch, partitioning.batch_sharding(trainer.mesh))
    return trainer.compiled_train_step(state, arrays, teacher_params)


@dataclasses.dataclass(frozen=True)
class StepMemory:
    """One device's bytes during the step, by kind (`compiled.memory_analysis()`)."""

    arguments: int
    outputs: int
    aliased: int
    temporaries: int
    code: int
    peak: int | None  # the compiler's own peak (TPU, GPU); None on CPU

    @property
    def total(self) -> int:
        """Arguments + outputs + temporaries - aliased (the donated state's outputs)."""
        return self.arguments + self.outputs + self.temporaries - self.aliased

    @property
    def held(self) -> int:
        """What the device must hold: the compiler's peak where it gives one (the high-water
        mark of its buffer schedule, which XLA's TPU compiler checks against the chip's
        usable memory, refusing a program over it), else the total (an upper bound: it
        ignores buffers that are never live together)."""
        return self.total if self.peak is None else self.peak

    def gib(self) -> dict[str, float]:
        figures = {
            "arguments": self.arguments,
            "outputs": self.outputs,
            "aliased": self.aliased,
            "temp": self.temporaries,
            "code": self.code,
            "total": self.total,
        }
        if self.peak is not None:
            figures["xla peak"] = self.peak
        return {kind: value / GIB for kind, value in figures.items()}


def step_memory(compiled: jax.stages.Compiled, platform: str) -> StepMemory:
    """The figures of a step compiled for `platform`'s devices ("cpu", "gpu", "tpu")."""
    stats = compiled.memory_analysis()
    peak = getattr(stats, "peak_memory_in_bytes", None)
    return StepMemory(
        arguments=stats.argument_size_in_bytes,
        outputs=stats.output_size_in_bytes,
        aliased=stats.alias_size_in_bytes,
        temporaries=stats.temp_size_in_bytes,
        code=stats.generated_code_size_in_bytes,
        peak=None if platform == "cpu" or peak is None else int(peak),
    )


def flops(compiled: jax.stages.Compiled) -> float | None:
    """XLA's count of one device's floating-point operations in the step, None if the
    backend gives none (`Trainer.flops_per_step` reads the same)."""
    analysis = compiled.cost_analysis()
    analysis = analysis[0] if isinstance(analysis, list) else analysis
    return float(analysis["flops"]) if analysis and "flops" in analysis else None
