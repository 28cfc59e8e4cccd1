"""The T5.1.1 configuration: one frozen dataclass, hashable so it can be a static jit argument."""

import dataclasses

import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class T5Config:
    """Sizes and options of a T5.1.1 encoder-decoder; field names follow T5X's `T5Config`.

    The presets (small, base, large, xl, xxl, and Flan-T5, which has the same shapes) live
    in `gin/models/`, so that there is one source of truth per size.
    """

    vocab_size: int = 32128
    emb_dim: int = 512
    num_heads: int = 6
    num_encoder_layers: int = 8
    num_decoder_layers: int = 8
    head_dim: int = 64
    mlp_dim: int = 1024
    dropout_rate: float = 0.0
    # Activations (matmul inputs); parameters stay float32. "bfloat16" on accelerators.
    dtype: str = "float32"
    relative_attention_num_buckets: int = 32
    relative_attention_max_distance: int = 128
    layer_norm_epsilon: float = 1e-6
    # Rematerialise each layer in the backward pass: trades compute for activation memory.
    remat: bool = False

    @property
    def activation_dtype(self) -> jnp.dtype:
        return jnp.dtype(self.dtype)

    @property
    def joined_kv_dim(self) -> int:
        return self.num_heads * self.head_dim
