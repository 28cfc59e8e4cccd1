"""SentencePiece tokenisation as SeqIO does it for T5, without TensorFlow.

Serving a student (`dsbs-infer`) and prompting a seq2seq teacher (`dsbs_jax.teacher.seq2seq`)
need token ids that match what SeqIO's `SentencePieceVocabulary` gave in training, on
machines that may have no TensorFlow: the text's ids, cut to leave room for EOS, then 0s.
"""

from collections.abc import Sequence

import numpy as np
import sentencepiece
from etils import epath

from dsbs_jax import decoding


class VocabularyError(ValueError):
    """The path does not hold a readable SentencePiece model."""


class Tokenizer:
    """A SentencePiece model used as `seqio.SentencePieceVocabulary` uses it for T5."""

    def __init__(self, path: str):
        try:
            proto = epath.Path(path).read_bytes()
            self.processor = sentencepiece.SentencePieceProcessor(model_proto=proto)
        except (OSError, RuntimeError) as error:
            message = getattr(error, "strerror", None) or error
            raise VocabularyError(f"{path}: not a SentencePiece model ({message})") from None

    def check_fits(self, vocab_size: int, path: str) -> None:
        """A model with fewer token ids than this vocabulary's pieces was trained with another
        one: refuse it rather than decode nonsense."""
        pieces = self.processor.get_piece_size()
        if pieces > vocab_size:
            raise VocabularyError(
                f"{path}: {pieces} pieces, more than the checkpoint's {vocab_size} (expected "
                "the vocabulary the model was trained with)"
            )

    def ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Each text's ids, uncut and without EOS."""
        return self.processor.encode(list(texts))

    def encode(self, texts: Sequence[str], length: int, *, keep_end: bool = False) -> np.ndarray:
        """`[len(texts), length]` int32: each text's ids cut to `length - 1`, EOS, then 0s.

        The cut drops the ids past the limit, or with `keep_end` those before it (for a
        few-shot prompt, whose query is at the end).
        """
        return pack(self.ids(texts), length, keep_end=keep_end)

    def decode(self, ids: Sequence[int]) -> str:
        """Text of the ids before the first EOS; ids past the model's pieces read as UNK."""
        ids = [int(i) for i in ids]
        if decoding.EOS_ID in ids:
            ids = ids[: ids.index(decoding.EOS_ID)]
        size, unk = self.processor.get_piece_size(), self.processor.unk_id()
        return self.processor.decode([unk if i >= size else i for i in ids if i != decoding.PAD_ID])


def pack(ids: Sequence[Sequence[int]], length: int, *, keep_end: bool = False) -> np.ndarray:
    """Rows of ids as `Tokenizer.encode` returns them (cut to `length - 1`, EOS, 0s)."""
    tokens = np.full((len(ids), length), decoding.PAD_ID, np.int32)
    for row, text_ids in zip(tokens, ids, strict=True):
        cut = max(len(text_ids) - (length - 1), 0)
        row_ids = [*(text_ids[cut:] if keep_end else text_ids[: length - 1]), decoding.EOS_ID]
        row[: len(row_ids)] = row_ids
    return tokens
