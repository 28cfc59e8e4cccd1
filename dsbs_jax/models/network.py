"""The T5.1.1 encoder-decoder, with the parameter tree of T5X's `examples/t5/network.py`.

Besides the teacher-forced forward pass (`__call__`), the model exposes the pieces that
decoding needs: `encode`, `cross_keys_values` (the encoder side of every cross-attention,
computed once) and `decode_step` (one token against an explicit key/value cache).
"""

import jax
import jax.numpy as jnp
from flax import linen as nn

from dsbs_jax.models.config import T5Config
from dsbs_jax.models.layers import (
    Attention,
    Embed,
    GatedMlp,
    Kernel,
    RelativePositionBias,
    RMSNorm,
    attention_bias,
    constrain,
    project,
)

ACTIVATION_AXES = ("batch", "length", "embed")
KeysValues = tuple[jax.Array, jax.Array]


def _norm(config: T5Config, name: str | None = None) -> RMSNorm:
    return RMSNorm(config.layer_norm_epsilon, config.activation_dtype, name=name)


def _dropout(config: T5Config) -> nn.Dropout:
    return nn.Dropout(config.dropout_rate, broadcast_dims=(-2,))


def _default_positions(tokens: jax.Array, positions: jax.Array | None) -> jax.Array:
    return jnp.arange(tokens.shape[1])[None] if positions is None else positions


def _same_segment(query_segments: jax.Array | None, key_segments: jax.Array | None) -> jax.Array:
    """`[batch, q, k]` True where query and key belong to the same packed example."""
    if query_segments is None or key_segments is None:
        return jnp.array(True)
    return query_segments[:, :, None] == key_segments[:, None, :]


def _maybe_remat(layer_cls: type[nn.Module], config: T5Config) -> type[nn.Module]:
    # static_argnums counts `self`; each layer class names where its `deterministic` is.
    return (
        nn.remat(layer_cls, static_argnums=(layer_cls.DETERMINISTIC_ARG,))
        if config.remat
        else layer_cls
    )


class EncoderLayer(nn.Module):
    """Pre-norm self-attention then gated MLP, each added back as a residual."""

    config: T5Config
    DETERMINISTIC_ARG = 3

    @nn.compact
    def __call__(self, x: jax.Array, bias: jax.Array, deterministic: bool) -> jax.Array:
        c = self.config
        y = _norm(c, "pre_attention_layer_norm")(x)
        y = Attention(c, name="attention").self_attend(y, bias, deterministic)
        x = x + _dropout(c)(y, deterministic)
        y = _norm(c, "pre_mlp_layer_norm")(x)
        y = GatedMlp(c, name="mlp")(y, deterministic)
        return constrain(x + _dropout(c)(y, deterministic), ACTIVATION_AXES)


class DecoderLayer(nn.Module):
    """Causal self-attention, cross-attention to the encoder, gated MLP; all pre-norm."""

    config: T5Config
    DETERMINISTIC_ARG = 5

    def setup(self):
        c = self.config
        self.pre_self_attention_layer_norm = _norm(c)
        self.self_attention = Attention(c)
        self.pre_cross_attention_layer_norm = _norm(c)
        self.encoder_decoder_attention = Attention(c)
        self.pre_mlp_layer_norm = _norm(c)
        self.mlp = GatedMlp(c)
        self.dropout = _dropout(c)

    def __call__(
        self,
        y: jax.Array,
        encoded: jax.Array,
        self_bias: jax.Array,
        cross_bias: jax.Array,
        deterministic: bool,
    ) -> jax.Array:
        x = self.pre_self_attention_layer_norm(y)
        attended = self.self_attention.self_attend(x, self_bias, deterministic)
        y = y + self.dropout(attended, deterministic)
        cross = self.encoder_decoder_attention.keys_values(encoded)
        return self.cross_attend_and_mlp(y, cross, cross_bias, deterministic)

    def cross_attend_and_mlp(
        self, y: jax.Array, cross: KeysValues, cross_bias: jax.Array, deterministic: bool
    ) -> jax.Array:
        x = self.pre_cross_attention_layer_norm(y)
        attended = self.encoder_decoder_attention.cross_attend(x, *cross, cross_bias, deterministic)
        y = y + self.dropout(attended, deterministic)
        x = self.pre_mlp_layer_norm(y)
        return constrain(
            y + self.dropout(self.mlp(x, deterministic), deterministic), ACTIVATION_AXES
        )

    def cross_keys_values(self, encoded: jax.Array) -> KeysValues:
        return self.encoder_decoder_attention.keys_values(encoded)

    def step(
        self,
        y: jax.Array,
        cache: KeysValues,
        index: jax.Array,
        self_bias: jax.Array,
        cross: KeysValues,
        cross_bias: jax.Array,
    ) -> tuple[jax.Array, KeysValues]:
        """Decode one position: write its key and value into the cache at `index`."""
        x = self.pre_self_attention_layer_norm(y)
        query, key, value = self.self_attention.queries_keys_values(x)
        keys = jax.lax.dynamic_update_slice_in_dim(cache[0], key.astype(cache[0].dtype), index, 2)
        values = jax.lax.dynamic_update_slice_in_dim(
            cache[1], value.astype(cache[1].dtype), index, 2
        )
        y = y + self.self_attention.attend(query, keys, values, self_bias, True)
        return self.cross_attend_and_mlp(y, cross, cross_bias, True), (keys, values)


class Encoder(nn.Module):
    config: T5Config
    embedder: Embed

    @nn.compact
    def __call__(
        self,
        tokens: jax.Array,
        segment_ids: jax.Array | None,
        positions: jax.Array | None,
        deterministic: bool,
    ) -> jax.Array:
        c = self.config
        x = _dropout(c)(constrain(self.embedder(tokens), ACTIVATION_AXES), deterministic)
        positions = _default_positions(tokens, positions)
        bias = RelativePositionBias(
            c.relative_attention_num_buckets,
            c.relative_attention_max_distance,
            c.num_heads,
            bidirectional=True,
            name="relpos_bias",
        )(positions, positions)
        mask = (tokens > 0)[:, None, :] & _same_segment(segment_ids, segment_ids)
        bias = bias + attention_bias(mask)
        layer_cls = _maybe_remat(EncoderLayer, c)
        for i in range(c.num_encoder_layers):
            x = layer_cls(c, name=f"layers_{i}")(x, bias, deterministic)
        return _dropout(c)(_norm(c, "encoder_norm")(x), deterministic)


class Decoder(nn.Module):
    config: T5Config
    embedder: Embed

    def setup(self):
        c = self.config
        self.relpos_bias = RelativePositionBias(
            c.relative_attention_num_buckets,
            c.relative_attention_max_distance,
            c.num_heads,
            bidirectional=False,
        )
        layer_cls = _maybe_remat(DecoderLayer, c)
        self.layers = [layer_cls(c) for _ in range(c.num_decoder_layers)]
        self.decoder_norm = _norm(c)
        self.dropout = _dropout(c)
        self.logits_dense = Kernel((c.emb_dim, c.vocab_size), ("embed", "vocab"))

    def logits(self, y: jax.Array, deterministic: bool) -> jax.Array:
        """Final norm and the untied output projection; logits are float32."""
        y = self.dropout(self.decoder_norm(y), deterministic)
        (logits,) = project(y, [self.logits_dense()], jnp.float32)
        return constrain(logits, ("batch", "length", "vocab"))

    def __call__(
        self,
        encoded: jax.Array,
        encoder_tokens: jax.Array,
        tokens: jax.Array,
        encoder_segment_ids: jax.Array | None,
        segment_ids: jax.Array | None,
        positions: jax.Array | None,
        deterministic: bool,
    ) -> jax.Array:
        y = self.dropout(constrain(self.embedder(tokens), ACTIVATION_AXES), deterministic)
        positions = _default_positions(tokens, positions)
        index = jnp.arange(tokens.shape[1])
        causal = index[None, :, None] >= index[None, None, :]
        self_bias = self.relpos_bias(positions, positions) + attention_bias(
            causal & _same_segment(segment_ids, segment_ids)
        )
        cross_mask = (encoder_tokens > 0)[:, None, :] & _same_segment(
            segment_ids, encoder_segment_ids
        )
        cross_bias = attention_bias(cross_mask)
        for layer in self.layers:
            y = layer(y, encoded, self_bias, cross_bias, deterministic)
        return self.logits(y, deterministic)

    def cross_keys_values(self, encoded: jax.Array) -> list[KeysValues]:
        return [layer.cross_keys_values(encoded) for layer in self.layers]

    def step(
        self,
        token: jax.Array,
        index: jax.Array,
        cache: list[KeysValues],
        cross: list[KeysValues],
        encoder_tokens: jax.Array,
    ) -> tuple[jax.Array, list[KeysValues]]:
        """Logits `[batch, vocab]` for the token at position `index`, and the updated cache."""
        y = self.embedder(token[:, None])
        max_length = cache[0][0].shape[2]
        key_positions = jnp.arange(max_length)[None]
        self_bias = self.relpos_bias(jnp.full((1, 1), index), key_positions) + attention_bias(
            (key_positions <= index)[:, None, :]
        )
        cross_bias = attention_bias((encoder_tokens > 0)[:, None, :])
        new_cache = []
        for layer, layer_cache, layer_cross in zip(self.layers, cache, cross, strict=True):
            y, layer_cache = layer.step(y, layer_cache, index, self_bias, layer_cross, cross_bias)
            new_cache.append(layer_cache)
        return self.logits(y, True)[:, 0], new_cache


class T5(nn.Module):
    """T5.1.1: `apply({'params': p}, encoder_input_tokens, decoder_input_tokens, ...)` gives
    float32 logits `[batch, length, vocab]`. Token 0 is padding (and the decoder's start)."""

    config: T5Config

    def setup(self):
        c = self.config
        self.token_embedder = Embed(c.vocab_size, c.emb_dim, c.activation_dtype)
        self.encoder = Encoder(c, self.token_embedder)
        self.decoder = Decoder(c, self.token_embedder)

    def encode(
        self,
        encoder_input_tokens: jax.Array,
        encoder_segment_ids: jax.Array | None = None,
        encoder_positions: jax.Array | None = None,
        enable_dropout: bool = False,
    ) -> jax.Array:
        return self.encoder(
            encoder_input_tokens, encoder_segment_ids, encoder_positions, not enable_dropout
        )

    def __call__(
        self,
        encoder_input_tokens: jax.Array,
        decoder_input_tokens: jax.Array,
        encoder_segment_ids: jax.Array | None = None,
        decoder_segment_ids: jax.Array | None = None,
        encoder_positions: jax.Array | None = None,
        decoder_positions: jax.Array | None = None,
        enable_dropout: bool = False,
    ) -> jax.Array:
        encoded = self.encode(
            encoder_input_tokens, encoder_segment_ids, encoder_positions, enable_dropout
        )
        return self.decoder(
            encoded,
            encoder_input_tokens,
            decoder_input_tokens,
            encoder_segment_ids,
            decoder_segment_ids,
            decoder_positions,
            not enable_dropout,
        )

    def cross_keys_values(self, encoded: jax.Array) -> list[KeysValues]:
        """Every decoder layer's cross-attention keys and values, computed once per input."""
        return self.decoder.cross_keys_values(encoded)

    def decode_step(
        self,
        token: jax.Array,
        index: jax.Array,
        cache: list[KeysValues],
        cross: list[KeysValues],
        encoder_input_tokens: jax.Array,
    ) -> tuple[jax.Array, list[KeysValues]]:
        return self.decoder.step(token, index, cache, cross, encoder_input_tokens)


def init_cache(config: T5Config, batch: int, max_length: int) -> list[KeysValues]:
    """Empty self-attention keys and values `[batch, heads, max_length, head_dim]` per layer."""
    shape = (batch, config.num_heads, max_length, config.head_dim)
    zeros = jnp.zeros(shape, config.activation_dtype)
    return [(zeros, zeros) for _ in range(config.num_decoder_layers)]
