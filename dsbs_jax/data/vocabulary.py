"""Training a SentencePiece vocabulary with T5's conventions, for data without T5's model."""

import io
from collections.abc import Iterable

import sentencepiece as spm


def train_sentencepiece(texts: Iterable[str], vocab_size: int) -> bytes:
    """A unigram model (serialized) trained on the lines of `texts`.

    T5's conventions (pad 0, eos 1, unk 2, no bos), so the model and SeqIO use it as they
    would T5's. Full character coverage makes every character seen in training encode, and
    digits are split so every number is spelled digit by digit. Pieces may span scripts:
    sentencepiece only seeds pieces whose continuations vary, so "predict" (always followed
    by ":") would otherwise never become a single piece. `vocab_size` is an upper bound
    (templated text may have few distinct words). One thread: the same texts always give
    the same model bytes.
    """
    sentences = [line for text in texts for line in text.splitlines() if line.strip()]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=model,
        model_type="unigram",
        vocab_size=vocab_size,
        hard_vocab_limit=False,
        character_coverage=1.0,
        split_digits=True,
        split_by_unicode_script=False,
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        num_threads=1,
        minloglevel=2,
    )
    return model.getvalue()
