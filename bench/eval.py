"""Label-prediction throughput on CPU: what `dsbs-eval` does on the CQA test split versus
Hugging Face's `generate`, same weights, same inputs, greedy, float32, in examples per second.

Evaluating a distilled student is mostly greedy decoding of short labels from inputs of very
different lengths, so this times that path end to end: `decode_by_length` (sort by length,
batch, restore order) over a `BatchDecoder` (each batch cut to its longest row, rounded up to
a bucket; a jitted decode loop). Our same decoder over batches in input order at the full
padded width shows what the length batching alone is worth. Hugging Face gets what a user of
it would write: consecutive batches in input order, each padded to its own longest row (as a
tokenizer's `padding=True` does), under `torch.inference_mode()` with denormals flushed.

T5's own SentencePiece model is not on this machine, so a stand-in (about 2,000 pieces) is
trained on the CQA training inputs; the model is a randomly initialised T5.1.1 preset (fixed
seed, its full vocabulary). A random model may never emit EOS, in which case every row runs
to `--max_length` on both sides alike. The script checks that both sides give the same ids
for every example (up to and including EOS) and prints the fraction of identical rows.

    python bench/eval.py [--size small|tiny] [--batch_size 64] [--max_length 16]
        [--examples N] [--input_length L] [--runs 1] [--threads T] [--no-torch]
"""

import argparse
import pathlib
from collections.abc import Callable

import jax
import numpy as np
import sentencepiece as spm
from common import SIZES, Params, cpu_cores, hf_greedy, init_params, log, setup_torch, time_in_turns

from dsbs_jax import decoding, partitioning
from dsbs_jax.data import release, vocabulary
from dsbs_jax.decoding import EOS_ID, PAD_ID
from dsbs_jax.evaluation import decode_by_length
from dsbs_jax.inference import WIDTH_BUCKET, BatchDecoder, params_sharding
from dsbs_jax.models import T5Config
from dsbs_jax.prefixes import LABEL_PREFIX

ROOT = pathlib.Path(__file__).resolve().parents[1]
Decode = Callable[[np.ndarray], np.ndarray]


def stand_in_tokens(manual_dir: pathlib.Path, vocab_size: int, examples: int | None) -> list:
    """The CQA test inputs, label-prefixed, as token ids with EOS, tokenised by a SentencePiece
    model trained on the (prefixed) training inputs."""
    splits = release.read_dataset(manual_dir, "cqa")
    train = [LABEL_PREFIX + e.input for e in splits["train"]]
    model = vocabulary.train_sentencepiece(train, vocab_size=vocab_size)
    processor = spm.SentencePieceProcessor(model_proto=model)
    test = [LABEL_PREFIX + e.input for e in splits["test"][:examples]]
    return [ids + [EOS_ID] for ids in processor.encode(test)]


def padded(rows: list, length: int) -> np.ndarray:
    """`rows` of ids right-padded with 0 to `length` columns."""
    tokens = np.full((len(rows), length), PAD_ID, np.int32)
    for i, row in enumerate(rows):
        tokens[i, : len(row)] = row
    return tokens


def in_input_order(decode: Decode, inputs: np.ndarray, batch_size: int) -> np.ndarray:
    """`decode` over consecutive batches at full width, the last padded with zero rows."""
    outputs = []
    for start in range(0, len(inputs), batch_size):
        batch = inputs[start : start + batch_size]
        rows = np.pad(batch, ((0, batch_size - len(batch)), (0, 0)))
        outputs.append(decode(rows)[: len(batch)])
    return np.concatenate(outputs)


def up_to_eos(ids: np.ndarray, max_length: int) -> np.ndarray:
    """Generated ids as `[rows, max_length]`, 0 after each row's first EOS."""
    ids = np.pad(ids, ((0, 0), (0, max_length - ids.shape[1])))
    after_eos = np.cumsum(ids == EOS_ID, axis=1) - (ids == EOS_ID) > 0
    return np.where(after_eos, PAD_ID, ids)


def generated_lengths(ids: np.ndarray) -> np.ndarray:
    """Tokens each row generated: up to and including its EOS, else all of them."""
    has_eos = (ids == EOS_ID).any(axis=1)
    return np.where(has_eos, np.argmax(ids == EOS_ID, axis=1) + 1, ids.shape[1])


def encoder_positions(rows: list, batch_size: int, bucket: int, full_batches: bool) -> int:
    """Token positions the encoder reads over batches of `rows` (in the given order), each
    padded to its longest row rounded up to `bucket` columns, and to `batch_size` rows when
    `full_batches` (ours: one compiled shape per width)."""
    total = 0
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        width = -(-max(map(len, chunk)) // bucket) * bucket
        total += width * (batch_size if full_batches else len(chunk))
    return total


def ours(
    config: T5Config, params: Params, inputs: np.ndarray, args
) -> dict[str, Callable[[], np.ndarray]]:
    """dsbs-eval's path (length-batched), and the same decoder in input order."""
    mesh = partitioning.make_mesh()
    placed = partitioning.place(params, params_sharding(config, mesh))
    decoder = BatchDecoder(config, placed, mesh, args.max_length)

    def full_width(tokens: np.ndarray) -> np.ndarray:
        return np.asarray(decoding.generate(config, placed, tokens, args.max_length))

    return {
        "ours": lambda: decode_by_length(decoder, inputs, args.batch_size),
        "ours_input_order": lambda: in_input_order(full_width, inputs, args.batch_size),
    }


def theirs(config: T5Config, params: Params, rows: list, args) -> Callable[[], np.ndarray]:
    """HF `generate` over consecutive batches, each padded to its own longest row."""
    import torch
    from common import to_hf

    model = to_hf(config, params)
    batches = []
    for start in range(0, len(rows), args.batch_size):
        chunk = rows[start : start + args.batch_size]
        input_ids = torch.from_numpy(padded(chunk, max(map(len, chunk)))).long()
        batches.append((input_ids, (input_ids != PAD_ID).long()))

    def run() -> np.ndarray:
        outputs = [hf_greedy(model, ids, mask, args.max_length) for ids, mask in batches]
        return np.concatenate([up_to_eos(out, args.max_length) for out in outputs])

    hf_greedy(model, *batches[0], args.max_length)  # warm-up batch
    return run


def keeping(outputs: dict, name: str, fn: Callable[[], np.ndarray]) -> Callable[[], None]:
    """`fn`, its latest result kept in `outputs[name]` (checked after timing)."""

    def run() -> None:
        outputs[name] = fn()

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--max_length", type=int, default=16, help="tokens to generate at most")
    parser.add_argument("--examples", type=int, default=None, help="first N (default: all)")
    parser.add_argument("--input_length", type=int, default=None, help="default: longest, to 32")
    parser.add_argument("--runs", type=int, default=1, help="timed passes each, after warm-up")
    parser.add_argument("--threads", type=int, default=cpu_cores(), help="torch threads")
    parser.add_argument("--no-torch", dest="torch", action="store_false", help="ours only")
    parser.add_argument("--manual_dir", type=pathlib.Path, default=ROOT.parent / "shared/datasets")
    args = parser.parse_args()
    config = SIZES[args.size]

    log("training a stand-in vocabulary and tokenising the CQA test split")
    rows = stand_in_tokens(args.manual_dir, min(2000, config.vocab_size), args.examples)
    longest = max(map(len, rows))
    args.input_length = args.input_length or -(-longest // WIDTH_BUCKET) * WIDTH_BUCKET
    if longest > args.input_length:
        raise SystemExit(f"--input_length {args.input_length} < longest input ({longest})")
    log(f"{len(rows)} examples, {longest} tokens at most, padded to {args.input_length}")

    log(f"building the {args.size} model")
    params = init_params(config)
    contenders = ours(config, params, padded(rows, args.input_length), args)
    log("warm-up: a pass of ours each (compiles every bucket shape)")
    for fn in contenders.values():
        fn()
    if args.torch:
        setup_torch(args.threads)
        contenders["hf"] = theirs(config, params, rows, args)

    log("timing in turns")
    outputs: dict[str, np.ndarray] = {}
    timings = time_in_turns(
        {name: keeping(outputs, name, fn) for name, fn in contenders.items()},
        warmup=0,
        runs=args.runs,
    )
    reference = outputs["ours"]
    same = {name: float((out == reference).all(axis=1).mean()) for name, out in outputs.items()}
    log(f"identical rows to ours (length-batched): {same}")

    speed = {name: len(rows) / timing.median for name, timing in timings.items()}
    by_length = sorted(rows, key=len, reverse=True)
    ours_positions = encoder_positions(by_length, args.batch_size, WIDTH_BUCKET, True)
    hf_positions = encoder_positions(rows, args.batch_size, 1, False)
    figures = [
        f"eval cqa test: {len(rows)} examples",
        f"size {args.size}, batch {args.batch_size}, inputs {args.input_length}",
        f"encoder positions ours {ours_positions} (bucket {WIDTH_BUCKET}), hf {hf_positions}",
        f"ours {speed['ours']:.1f} ex/s (length-batched)",
        f"ours {speed['ours_input_order']:.1f} ex/s (input order)",
    ]
    if args.torch:
        figures += [
            f"hf {speed['hf']:.1f} ex/s (input order, padded to each batch's longest)",
            f"speedup {speed['ours'] / speed['hf']:.2f}x",
            f"identical rows {same['hf']:.3f}",
        ]
    figures += [
        f"identical rows in input order {same['ours_input_order']:.3f}",
        f"mean length {generated_lengths(reference).mean():.1f} of {args.max_length}",
        f"cores {cpu_cores()}, torch threads {args.threads if args.torch else '-'}",
        f"jax {jax.__version__}",
    ]
    print(", ".join(figures))


if __name__ == "__main__":
    main()
