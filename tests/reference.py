"""The independent reference: Hugging Face transformers' PyTorch T5, made small in tests."""

import numpy as np
import torch
import transformers

from dsbs_jax import checkpoints


def make_hf_t5(seed: int = 0, **sizes) -> transformers.T5ForConditionalGeneration:
    """A random-init T5.1.1 with its own (untied, unscaled) output head, as real ones have."""
    torch.manual_seed(seed)
    options = dict(
        vocab_size=96,
        d_model=16,
        d_kv=4,
        d_ff=32,
        num_layers=2,
        num_heads=4,
        dropout_rate=0.0,
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )
    options.update(sizes)
    model = transformers.T5ForConditionalGeneration(transformers.T5Config(**options)).eval()
    vocab, d_model = options["vocab_size"], options["d_model"]
    model.lm_head.weight = torch.nn.Parameter(torch.randn(vocab, d_model) * 0.5)
    return model


def save_and_load(model: transformers.PreTrainedModel, directory) -> tuple:
    """Write with `save_pretrained`, read back with our `checkpoints.load`."""
    model.save_pretrained(directory)
    return checkpoints.load(directory)


def hf_logits(model, encoder_tokens: np.ndarray, decoder_tokens: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        out = model(
            input_ids=torch.tensor(encoder_tokens),
            attention_mask=torch.tensor(encoder_tokens > 0),
            decoder_input_ids=torch.tensor(decoder_tokens),
        )
    return out.logits.float().numpy()


def random_batch(seed: int, batch: int, enc_len: int, dec_len: int, vocab: int, pad_from=()):
    """Token ids in [2, vocab); row i of the encoder input is padded from `pad_from[i]` on."""
    rng = np.random.RandomState(seed)
    encoder = rng.randint(2, vocab, (batch, enc_len))
    for row, start in enumerate(pad_from):
        encoder[row, start:] = 0
    decoder = rng.randint(2, vocab, (batch, dec_len))
    decoder[:, 0] = 0
    return encoder, decoder


def assert_logits_close(ours: np.ndarray, theirs: np.ndarray) -> None:
    """Float32 agreement: relative 1e-5, absolute 1e-5 of the largest logit."""
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5 * np.abs(theirs).max())
