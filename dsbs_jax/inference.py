"""Decoding batches of token ids with a model spread over a mesh (no TensorFlow here).

Every binary that decodes (training's evaluation, `dsbs-eval`, `dsbs-infer`) goes
through `BatchDecoder`: each host holds the whole batch, puts its share of the rows on
its devices, and gets every row's output back. Inputs are cut to the width of their
longest row, rounded up to a bucket, so short batches run a shorter encoder and
cross-attention; the bucketing keeps the number of compiled shapes small.
"""

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from jax.sharding import Mesh

from dsbs_jax import checkpoints, decoding, partitioning
from dsbs_jax.models import T5, T5Config

Params = Any
WIDTH_BUCKET = 8


def _boxed_params(config: T5Config) -> Params:
    tokens = jnp.ones((1, 1), jnp.int32)
    return jax.eval_shape(lambda: T5(config).init(jax.random.key(0), tokens, tokens))["params"]


def params_sharding(config: T5Config, mesh: Mesh) -> Params:
    """Where each parameter lives on `mesh`, from the model's logical axis names."""
    return partitioning.logical_shardings(mesh, _boxed_params(config))


def load_params(path: str, mesh: Mesh) -> tuple[T5Config, Params]:
    """`checkpoints.load` (HF, T5X or Orbax), with the parameters placed on `mesh`. An Orbax
    checkpoint is read straight into place, each host reading only its own shards."""

    def target(config: T5Config) -> Params:
        abstract = nn.meta.unbox(_boxed_params(config))
        return partitioning.abstract_arrays(abstract, params_sharding(config, mesh))

    if checkpoints.detect_format(path) == "orbax":
        return checkpoints.load_orbax(epath.Path(path), target)
    config, params = checkpoints.load(path)
    return config, partitioning.place(params, params_sharding(config, mesh))


def trimmed_width(tokens: np.ndarray, bucket: int = WIDTH_BUCKET) -> int:
    """The columns a batch needs: up to its last non-padding token, rounded up to `bucket`."""
    used = np.flatnonzero(np.any(tokens != decoding.PAD_ID, axis=0))
    width = int(used[-1]) + 1 if used.size else 1
    return min(tokens.shape[1], -(-width // bucket) * bucket)


class BatchDecoder:
    """`decoder(tokens [batch, length]) -> ids [batch, max_length]` for placed `params`.

    The batch's row count must divide evenly over the mesh's `data` axis.
    """

    def __init__(
        self,
        config: T5Config,
        params: Params,
        mesh: Mesh,
        max_length: int,
        method: str = "greedy",
        options: Mapping[str, Any] | None = None,
    ):
        self.config, self.params, self.mesh = config, params, mesh
        self.max_length, self.method = max_length, method
        self.options = dict(options or {})

    def __call__(self, tokens: np.ndarray, rng: jax.Array | None = None) -> np.ndarray:
        """Decodes one batch; `rng`, if given, replaces the options' (a new draw per batch)."""
        tokens = np.asarray(tokens)[:, : trimmed_width(tokens)]
        inputs = partitioning.whole_batch(self.mesh, {"t": tokens})["t"]
        options = self.options if rng is None else {**self.options, "rng": rng}
        output = decoding.generate(
            self.config, self.params, inputs, self.max_length, self.method, **options
        )
        return partitioning.gather(output)
