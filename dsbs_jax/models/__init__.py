"""The Flax T5.1.1 student (and teacher) model."""

from dsbs_jax.models.config import T5Config
from dsbs_jax.models.network import T5, init_cache

__all__ = ["T5", "T5Config", "init_cache"]
