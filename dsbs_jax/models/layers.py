"""T5.1.1 building blocks with T5X's parameter names, shapes and logical axis names.

Every parameter is created through `nn.with_logical_partitioning`, so the partitioner can
place it by its logical axes (`embed`, `mlp`, `joined_kv`, `vocab`, `heads`,
`relpos_buckets`) and a T5X checkpoint maps onto this tree as an identity.
"""

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import linen as nn

from dsbs_jax.models.config import T5Config

# Additive attention bias for masked positions: large enough to vanish in softmax, small
# enough to stay finite in bfloat16 and after adding the relative position bias.
MASK_BIAS = -1e10

Initializer = Callable[..., jax.Array]
default_kernel_init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")


def constrain(x: jax.Array, axes: tuple[str, ...]) -> jax.Array:
    """Name an activation's logical axes; a no-op unless axis rules are in scope."""
    return nn.with_logical_constraint(x, axes)


class RMSNorm(nn.Module):
    """T5's layer norm: no mean subtraction, no bias, computed in float32."""

    epsilon: float
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param(
            "scale", nn.with_logical_partitioning(nn.initializers.ones, ("embed",)), (x.shape[-1],)
        )
        x = x.astype(jnp.float32)
        x = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + self.epsilon)
        return (x * scale).astype(self.dtype)


class Kernel(nn.Module):
    """A bias-free projection's 2-D kernel (`<name>/kernel`), with two logical axis names.

    Layers read kernels and multiply with `project`, whose hand-written backward pass
    serves all projections of one input (query/key/value, `wi_0`/`wi_1`) at once.
    """

    shape: tuple[int, int]
    axes: tuple[str, str]
    init: Initializer = default_kernel_init

    @nn.compact
    def __call__(self) -> jax.Array:
        return self.param("kernel", nn.with_logical_partitioning(self.init, self.axes), self.shape)


@jax.custom_vjp
def _project(x: jax.Array, kernels: tuple[jax.Array, ...]) -> tuple[jax.Array, ...]:
    return tuple(jnp.dot(x, k) for k in kernels)


def _project_forward(x, kernels):
    return _project(x, kernels), (x, kernels)


def _project_backward(residuals, grads):
    """The gradients as plain row-major matmuls: `dx = sum(dy_i k_i^T)`, `dk_i = x^T dy_i`.

    XLA's own transpose of these dots left the gradient of x in a transposed layout on
    CPU, and summing two of them (`wi_0`, `wi_1`) then cost a copy as large as the
    matmuls' time; written out like this the training step is about 15% faster.
    """
    x, kernels = residuals
    dx = sum(jnp.dot(g, k.T) for g, k in zip(grads, kernels, strict=True))
    rows = x.reshape(-1, x.shape[-1]).T
    return dx, tuple(jnp.dot(rows, g.reshape(-1, g.shape[-1])) for g in grads)


_project.defvjp(_project_forward, _project_backward)


def project(x: jax.Array, kernels: list[jax.Array], dtype: jnp.dtype) -> list[jax.Array]:
    """`x @ k` for each kernel, in `dtype`, with a backward pass written for XLA's CPU."""
    return list(_project(x.astype(dtype), tuple(k.astype(dtype) for k in kernels)))


class Embed(nn.Module):
    """The shared token embedding (`token_embedder/embedding [vocab, embed]`)."""

    num_embeddings: int
    features: int
    dtype: jnp.dtype

    def setup(self):
        self.embedding = self.param(
            "embedding",
            nn.with_logical_partitioning(nn.initializers.normal(stddev=1.0), ("vocab", "embed")),
            (self.num_embeddings, self.features),
        )

    def __call__(self, tokens: jax.Array) -> jax.Array:
        return jnp.take(self.embedding, tokens, axis=0).astype(self.dtype)


def relative_position_bucket(
    relative_position: jax.Array, bidirectional: bool, num_buckets: int, max_distance: int
) -> jax.Array:
    """Mesh TensorFlow's bucketing of `key_position - query_position`.

    Half the buckets hold exact small distances, the rest grow logarithmically up to
    `max_distance`; a bidirectional table spends half its buckets on each direction.
    """
    bucket = jnp.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        bucket += (relative_position > 0).astype(jnp.int32) * num_buckets
        distance = jnp.abs(relative_position)
    else:
        distance = -jnp.minimum(relative_position, 0)
    max_exact = num_buckets // 2
    is_small = distance < max_exact
    # Clamp before the log so that the unused branch never sees log(0).
    scaled = jnp.log(jnp.maximum(distance, 1).astype(jnp.float32) / max_exact) / math.log(
        max_distance / max_exact
    )
    large = max_exact + (scaled * (num_buckets - max_exact)).astype(jnp.int32)
    large = jnp.minimum(large, num_buckets - 1)
    return bucket + jnp.where(is_small, distance, large)


class RelativePositionBias(nn.Module):
    """One learned bias per head and distance bucket, shared by all layers of a stack."""

    num_buckets: int
    max_distance: int
    num_heads: int
    bidirectional: bool

    @nn.compact
    def __call__(self, query_positions: jax.Array, key_positions: jax.Array) -> jax.Array:
        """Positions are `[batch or 1, length]`; returns a float32 bias `[batch, heads, q, k]`."""
        table = self.param(
            "rel_embedding",
            nn.with_logical_partitioning(
                nn.initializers.variance_scaling(1.0, "fan_avg", "uniform"),
                ("heads", "relpos_buckets"),
            ),
            (self.num_heads, self.num_buckets),
        )
        relative = key_positions[:, None, :] - query_positions[:, :, None]
        buckets = relative_position_bucket(
            relative, self.bidirectional, self.num_buckets, self.max_distance
        )
        return jnp.moveaxis(jnp.take(table, buckets, axis=1), 0, 1)


class Attention(nn.Module):
    """Multi-head dot-product attention with joined `[embed, heads * head_dim]` kernels.

    Keys and values are laid out `[batch, heads, length, head_dim]`, so both the decoding
    cache and the attention products read them without a transpose. As in T5, the logits
    are not scaled by 1/sqrt(head_dim): that factor is folded into the query initialiser.
    """

    config: T5Config

    def setup(self):
        c = self.config
        shape, axes = (c.emb_dim, c.joined_kv_dim), ("embed", "joined_kv")
        query_init = nn.initializers.variance_scaling(
            1.0 / c.head_dim, "fan_in", "truncated_normal"
        )
        self.query = Kernel(shape, axes, query_init)
        self.key = Kernel(shape, axes)
        self.value = Kernel(shape, axes)
        self.out = Kernel((c.joined_kv_dim, c.emb_dim), ("joined_kv", "embed"))
        self.dropout = nn.Dropout(c.dropout_rate, broadcast_dims=(-2,))

    def split_heads(self, x: jax.Array) -> jax.Array:
        batch, length, _ = x.shape
        x = x.reshape(batch, length, self.config.num_heads, self.config.head_dim)
        return constrain(x.transpose(0, 2, 1, 3), ("batch", "heads", "length", "kv"))

    def _project(self, x: jax.Array, kernels: list[Kernel]) -> list[jax.Array]:
        outputs = project(x, [k() for k in kernels], self.config.activation_dtype)
        return [self.split_heads(y) for y in outputs]

    def keys_values(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Project `x` to keys and values, each `[batch, heads, length, head_dim]`."""
        keys, values = self._project(x, [self.key, self.value])
        return keys, values

    def queries_keys_values(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        query, keys, values = self._project(x, [self.query, self.key, self.value])
        return query, keys, values

    def self_attend(self, x: jax.Array, bias: jax.Array, deterministic: bool) -> jax.Array:
        return self.attend(*self.queries_keys_values(x), bias, deterministic)

    def cross_attend(
        self,
        x: jax.Array,
        keys: jax.Array,
        values: jax.Array,
        bias: jax.Array,
        deterministic: bool,
    ) -> jax.Array:
        """Attend from `x [batch, q, embed]` to precomputed keys and values."""
        (query,) = self._project(x, [self.query])
        return self.attend(query, keys, values, bias, deterministic)

    def attend(
        self,
        query: jax.Array,
        keys: jax.Array,
        values: jax.Array,
        bias: jax.Array,
        deterministic: bool,
    ) -> jax.Array:
        """Attention of projected queries over keys and values, then the output projection."""
        logits = jnp.einsum("bhqd,bhkd->bhqk", query, keys, preferred_element_type=jnp.float32)
        weights = jax.nn.softmax(logits + bias, axis=-1).astype(self.config.activation_dtype)
        weights = self.dropout(weights, deterministic=deterministic)
        y = jnp.einsum("bhqk,bhkd->bhqd", weights, values)
        batch, _, length, _ = y.shape
        y = y.transpose(0, 2, 1, 3).reshape(batch, length, self.config.joined_kv_dim)
        y = constrain(y, ("batch", "length", "joined_kv"))
        (out,) = project(y, [self.out()], self.config.activation_dtype)
        return out


class GatedMlp(nn.Module):
    """T5.1.1's gated-GELU feed-forward block: `wo(gelu(wi_0 x) * wi_1 x)`."""

    config: T5Config

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        c = self.config
        dtype = c.activation_dtype
        wi = [Kernel((c.emb_dim, c.mlp_dim), ("embed", "mlp"), name=f"wi_{i}")() for i in (0, 1)]
        gate, linear = project(x, wi, dtype)
        hidden = constrain(nn.gelu(gate, approximate=True) * linear, ("batch", "length", "mlp"))
        hidden = nn.Dropout(c.dropout_rate, broadcast_dims=(-2,))(hidden, deterministic)
        wo = Kernel((c.mlp_dim, c.emb_dim), ("mlp", "embed"), name="wo")()
        (out,) = project(hidden, [wo], dtype)
        return out


def attention_bias(mask: jax.Array) -> jax.Array:
    """Turn a boolean `[batch, q, k]` mask into an additive float32 `[batch, 1, q, k]` bias."""
    return jnp.where(mask, 0.0, MASK_BIAS).astype(jnp.float32)[:, None]
