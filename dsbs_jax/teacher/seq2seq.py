"""An encoder-decoder checkpoint as the teacher, decoded in this process over the mesh.

Users with a TPU slice and a large instruction-tuned T5 (Flan-T5-XXL) can annotate without
any server: the checkpoint is read by `dsbs_jax.checkpoints` like a student's, the few-shot
prompt is the encoder input, and decoding is the project's own `generate` through
`inference.BatchDecoder`. A T5 reads the whole prompt at once, so a prompt whose tokens and
EOS exceed `max_input_length` loses whole exemplars from the end of its exemplar list until
it fits: what is left is the prompt's first exemplars as written (the ones its author put
first), then the query, never a part of an exemplar. Only a query too long on its own is
cut, from its start, with a warning.
"""

import hashlib
import json
import logging
from collections.abc import Iterator, Sequence

import jax
import numpy as np

from dsbs_jax import inference, partitioning
from dsbs_jax.files import absolute
from dsbs_jax.teacher.backends import Answer
from dsbs_jax.teacher.prompts import Prompt
from dsbs_jax.tokenizer import Tokenizer, pack

log = logging.getLogger(__name__)


class Seq2SeqTeacher:
    """A teacher backend over a T5 checkpoint that `checkpoints.load` reads.

    Greedy when `temperature` is 0, else sampling at that temperature. Sampled outputs are
    reproducible for the same seed, inputs and `batch_size`: each batch of each sample draws
    with a key folded from `seed`, the sample's number and a hash of the batch's inputs, so
    the batches of separate `generate` calls (annotate's chunks) draw separate noise.
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
        self.checkpoint, self.vocabulary = absolute(checkpoint), absolute(vocabulary)
        self.prompt = prompt
        self.max_input_length, self.max_length = max_input_length, max_length
        self.batch_size, self.temperature, self.seed = batch_size, temperature, seed
        self.tokenizer = Tokenizer(vocabulary)
        mesh = partitioning.make_mesh(model_parallelism)
        if batch_size % partitioning.batch_shards(mesh):
            raise ValueError(
                f"batch_size {batch_size} must be a multiple of the mesh's data axis "
                f"({partitioning.batch_shards(mesh)})"
            )
        config, params = inference.load_params(checkpoint, mesh)
        self.tokenizer.check_fits(config.vocab_size, vocabulary)
        method, options = (
            ("sample", {"temperature": temperature}) if temperature else ("greedy", {})
        )
        self.decoder = inference.BatchDecoder(config, params, mesh, max_length, method, options)
        self._warned: set[str] = set()

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
                rng = self._rng(sample, inputs[start : start + self.batch_size])
                ids = self.decoder(padded, rng=rng)[: len(batch)]
                for output, row in zip(outputs[start : start + len(batch)], ids, strict=True):
                    output.append(self.tokenizer.decode(row))
        return [output * (samples // draws) for output in outputs]

    def stream(self, inputs: Sequence[str], samples: int) -> Iterator[tuple[int, list[Answer]]]:
        """`generate` one batch at a time, each input's index and answers as its batch ends:
        the batches, and so the sampling keys, are `generate`'s."""
        for start in range(0, len(inputs), self.batch_size):
            outputs = self.generate(inputs[start : start + self.batch_size], samples)
            for offset, texts in enumerate(outputs):
                yield start + offset, [Answer(text, None) for text in texts]

    def _encode(self, inputs: Sequence[str]) -> np.ndarray:
        """The few-shot prompts' tokens, each with as many first exemplars as fit in
        `max_input_length`; a query alone too long is cut from its start."""
        prompts = [self._prompt_ids(input) for input in inputs]
        ids = [row for row, _ in prompts]
        shortened = sum(shots < len(self.prompt.exemplars) for _, shots in prompts)
        self._warn_once(
            "exemplars",
            shortened,
            "%d of %d prompts do not fit max_input_length %d with all %d exemplars: their "
            "last exemplars are dropped until they fit",
            shortened,
            len(ids),
            self.max_input_length,
            len(self.prompt.exemplars),
        )
        cut = sum(len(row) >= self.max_input_length for row in ids)
        self._warn_once(
            "queries",
            cut,
            "%d of %d queries alone are longer than max_input_length %d (up to %d tokens "
            "with EOS): the query itself loses its first tokens",
            cut,
            len(ids),
            self.max_input_length,
            max(map(len, ids), default=0) + 1,
        )
        return pack(ids, self.max_input_length, keep_end=True)

    def _prompt_ids(self, input: str) -> tuple[list[int], int]:
        """The ids of the prompt with the most first exemplars that fit with EOS, and how
        many exemplars that is; the bare query's ids if none does."""
        for shots in range(len(self.prompt.exemplars), -1, -1):
            ids = self.tokenizer.ids([self.prompt.text(input, shots)])[0]
            if len(ids) < self.max_input_length:
                break
        return ids, shots

    def _warn_once(self, kind: str, count: int, message: str, *args: object) -> None:
        if count and kind not in self._warned:
            log.warning(message + "; shown once", *args)
            self._warned.add(kind)

    def _rng(self, sample: int, inputs: Sequence[str]) -> jax.Array | None:
        """The key of one batch of one sample: the same inputs draw the same noise, other
        inputs (another chunk's batch) other noise. SHA-256, not `hash`, which Python
        salts per process."""
        if not self.temperature:
            return None
        text = json.dumps(list(inputs), ensure_ascii=False).encode("utf-8")
        content = int.from_bytes(hashlib.sha256(text).digest()[:4], "little")
        key = jax.random.fold_in(jax.random.PRNGKey(self.seed), sample)
        return jax.random.fold_in(key, content)
