"""The tiny T5 that unit tests build: small enough to compile and run in a second."""

from dsbs_jax.models import T5Config


def tiny_config(**overrides) -> T5Config:
    options = dict(
        vocab_size=64,
        emb_dim=16,
        num_heads=2,
        head_dim=8,
        mlp_dim=32,
        num_encoder_layers=2,
        num_decoder_layers=2,
    )
    options.update(overrides)
    return T5Config(**options)
