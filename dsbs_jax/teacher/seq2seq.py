"""An encoder-decoder checkpoint as the teacher, decoded in this process over the mesh.

Users with a TPU slice and a large instruction-tuned T5 (Flan-T5-XXL) can annotate without
any server: the checkpoint is read by `dsbs_jax.checkpoints` like a student's, the few-shot
prompt is the encoder input, and decoding is the project's own `generate` through
`inference.BatchDecoder`. A T5 reads the whole prompt at once, so a prompt longer than
`max_input_length` loses tokens from its start (the first exemplars), never the query.
"""

import logging
import os
from collections.abc import Sequence

import jax
import numpy as np

from dsbs_jax import inference, partitioning
from dsbs_jax.teacher.prompts import Prompt
from dsbs_jax.tokenizer import Tokenizer, pack

log = logging.getLogger(__name__)


class Seq2SeqTeacher:
    """A teacher backend over a T5 checkpoint that `checkpoints.load` reads.

    Greedy when `temperature` is 0, else sampling at that temperature. Sampled outputs are
    reproducible for the same seed, inputs and `batch_size`: each batch of each sample draws
    with a key folded from `seed`, the sample's number and the batch's first position.
    """

    def __init__(
        self,
        checkpoint: str,
        vocabulary: str,
        prompt: Prompt,
        *,
        max_input_length: int = 1024,
        max_length: int = 128,
        batch_size: int = 8,
        temperature: float = 0.0,
        model_parallelism: int = 1,
        seed: int = 0,
    ):
        for name, value in (
            ("max_input_length", max_input_length),
            ("max_length", max_length),
            ("batch_size", batch_size),
        ):
            if value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")
        if temperature < 0:
            raise ValueError(f"temperature must be 0 (greedy) or more, got {temperature}")
        self.checkpoint, self.vocabulary = _absolute(checkpoint), _absolute(vocabulary)
        self.prompt = prompt
        self.max_input_length, self.max_length = max_input_length, max_length
        self.batch_size, self.temperature, self.seed = batch_size, temperature, seed
        self.tokenizer = Tokenizer(vocabulary)
        mesh = partitioning.make_mesh(model_parallelism)
        if batch_size % mesh.shape[partitioning.DATA]:
            raise ValueError(
                f"batch_size {batch_size} must be a multiple of the mesh's data axis "
                f"({mesh.shape[partitioning.DATA]})"
            )
        config, params = inference.load_params(checkpoint, mesh)
        pieces = self.tokenizer.processor.get_piece_size()
        if pieces > config.vocab_size:
            raise ValueError(
                f"vocabulary {vocabulary}: {pieces} pieces, more than the checkpoint's "
                f"{config.vocab_size} (expected the vocabulary the teacher was trained with)"
            )
        method, options = (
            ("sample", {"temperature": temperature}) if temperature else ("greedy", {})
        )
        self.decoder = inference.BatchDecoder(config, params, mesh, max_length, method, options)
        self._warned_about_cuts = False

    @property
    def description(self) -> dict:
        """What identifies this teacher's outputs, for fingerprints and the manifest."""
        return {
            "backend": "seq2seq",
            "checkpoint": self.checkpoint,
            "vocabulary": self.vocabulary,
            "max_input_length": self.max_input_length,
            "max_length": self.max_length,
            "temperature": self.temperature,
            "seed": self.seed,
        }

    def generate(self, inputs: Sequence[str], samples: int) -> list[list[str]]:
        """`samples` raw output texts per input; greedy decodes once and repeats it."""
        if samples < 1:
            raise ValueError(f"samples must be at least 1, got {samples}")
        tokens = self._encode(inputs)
        draws = samples if self.temperature else 1
        outputs: list[list[str]] = [[] for _ in inputs]
        for sample in range(draws):
            for start in range(0, len(tokens), self.batch_size):
                batch = tokens[start : start + self.batch_size]
                padded = np.pad(batch, ((0, self.batch_size - len(batch)), (0, 0)))
                ids = self.decoder(padded, rng=self._rng(sample, start))[: len(batch)]
                for output, row in zip(outputs[start : start + len(batch)], ids, strict=True):
                    output.append(self.tokenizer.decode(row))
        return [output * (samples // draws) for output in outputs]

    def _encode(self, inputs: Sequence[str]) -> np.ndarray:
        """The few-shot prompts' tokens, each cut from the start to `max_input_length`."""
        ids = self.tokenizer.ids([self.prompt.text(input) for input in inputs])
        cut = sum(len(row) >= self.max_input_length for row in ids)
        if cut and not self._warned_about_cuts:
            longest = max(len(row) for row in ids) + 1
            log.warning(
                "%d of %d prompts are longer than max_input_length %d (up to %d tokens): "
                "their first tokens are dropped; shown once",
                cut,
                len(ids),
                self.max_input_length,
                longest,
            )
            self._warned_about_cuts = True
        return pack(ids, self.max_input_length, keep_end=True)

    def _rng(self, sample: int, start: int) -> jax.Array | None:
        if not self.temperature:
            return None
        return jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(self.seed), sample), start)


def _absolute(path: str) -> str:
    """A local path made absolute, so a description names the same files from any folder;
    a URL (`gs://...`) as it is."""
    return path if "://" in path else os.path.abspath(path)
