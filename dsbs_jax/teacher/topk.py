"""A teacher's top-k next-token log-probabilities on given targets, for offline distillation.

The teacher is teacher-forced on a task's own inputs and targets, exactly as an online
teacher runs inside the training step, and keeps only the k most likely tokens at each
target position (`dsbs-annotate --save_topk K` stores them; `losses.topk_kl_sums` uses
them). Imports no TensorFlow.
"""

import jax
import jax.numpy as jnp
import numpy as np

from dsbs_jax import inference, partitioning
from dsbs_jax.models import T5


class TopKScorer:
    """`scorer(encoder_input_tokens, decoder_input_tokens) -> (ids, logprobs)`, each
    `[batch, length, k]`, from a checkpoint that `checkpoints.load` reads.

    Batches of any size up to `batch_size` are padded to it, so one program serves all.
    Log-probabilities are the teacher's at temperature 1, in float32.
    """

    def __init__(self, checkpoint: str, k: int, batch_size: int = 8, model_parallelism: int = 1):
        if k < 1 or batch_size < 1:
            raise ValueError(f"k and batch_size must be at least 1, got {k} and {batch_size}")
        self.mesh = partitioning.make_mesh(model_parallelism)
        if batch_size % partitioning.batch_shards(self.mesh):
            raise ValueError(
                f"batch_size {batch_size} must be a multiple of the mesh's data axis "
                f"({partitioning.batch_shards(self.mesh)})"
            )
        self.config, self.params = inference.load_params(checkpoint, self.mesh)
        if k > self.config.vocab_size:
            raise ValueError(f"k {k} exceeds the teacher's vocabulary ({self.config.vocab_size})")
        self.k, self.batch_size = k, batch_size
        model = T5(self.config)

        def score(params, encoder_input_tokens, decoder_input_tokens):
            logits = model.apply({"params": params}, encoder_input_tokens, decoder_input_tokens)
            logprobs, ids = jax.lax.top_k(jax.nn.log_softmax(logits.astype(jnp.float32)), k)
            return ids.astype(jnp.int32), logprobs

        self._score = jax.jit(score)

    def __call__(
        self, encoder_input_tokens: np.ndarray, decoder_input_tokens: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        rows = len(encoder_input_tokens)
        if rows > self.batch_size:
            raise ValueError(f"a batch of {rows} rows exceeds batch_size {self.batch_size}")

        tokens = {
            "encoder": np.pad(encoder_input_tokens, [(0, self.batch_size - rows), (0, 0)]),
            "decoder": np.pad(decoder_input_tokens, [(0, self.batch_size - rows), (0, 0)]),
        }
        # Every host holds the whole batch, as in `inference.BatchDecoder`.
        batch = partitioning.whole_batch(self.mesh, tokens)
        ids, logprobs = self._score(self.params, batch["encoder"], batch["decoder"])
        return partitioning.gather(ids)[:rows], partitioning.gather(logprobs)[:rows]
