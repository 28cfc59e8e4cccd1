"""Input-pipeline throughput: paired label + rationale batches for CQA at T5-base lengths.

Builds `dsbs_cqa` from the paper's release (`--manual_dir`, default `../shared/datasets`)
into a temporary TFDS dir, trains a stand-in SentencePiece vocabulary on its text (T5's
own model is not on this machine; tokenization cost hardly depends on the vocabulary
size), and times the paired pipeline that training reads: shuffle, both tasks'
preprocessing and tokenization, `EncDecFeatureConverter`, batching. Prints examples/s.

    python bench/data.py [--batch 64] [--inputs 1024] [--targets 256] [--steps 50]
"""

import argparse
import pathlib
import tempfile
import time

from common import log

import tasks
from dsbs_jax.data import pairing, release, vocabulary
from dsbs_jax.programs import prepare

ROOT = pathlib.Path(__file__).resolve().parents[1]


def stand_in_vocabulary(manual_dir: pathlib.Path, directory: pathlib.Path) -> str:
    examples = release.read_split(manual_dir, "cqa", "train")
    texts = [e.input for e in examples] + [e.teacher_output for e in examples]
    path = directory / "spm.model"
    path.write_bytes(vocabulary.train_sentencepiece(texts, vocab_size=8000))
    return str(path)


def register_cqa(manual_dir: pathlib.Path, directory: pathlib.Path) -> None:
    """`dsbs_cqa` built into `directory/tfds`, its tasks registered over a stand-in vocabulary."""
    log("building dsbs_cqa and a stand-in vocabulary")
    prepare.build("cqa", manual_dir, directory / "tfds")
    vocabulary = stand_in_vocabulary(manual_dir, directory)
    tasks.register(data_dir=str(directory / "tfds"), vocabulary_path=vocabulary)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--manual_dir", type=pathlib.Path, default=ROOT.parent / "shared/datasets")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--inputs", type=int, default=1024)
    parser.add_argument("--targets", type=int, default=256)
    parser.add_argument("--steps", type=int, default=50, help="timed batches after a warm-up")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        register_cqa(args.manual_dir, pathlib.Path(directory))
        lengths = {"inputs": args.inputs, "targets": args.targets}
        batches = pairing.paired_batches(
            {"label": ("dsbs_cqa_label_gt", lengths), "rationale": ("dsbs_cqa_rationale", lengths)},
            "train",
            args.batch,
            seed=0,
        )
        iterator = batches.as_numpy_iterator()
        for _ in range(5):
            next(iterator)
        start = time.perf_counter()
        for _ in range(args.steps):
            next(iterator)
        seconds = time.perf_counter() - start
    rate = args.steps * args.batch / seconds
    print(
        f"paired pipeline cqa batch={args.batch} inputs={args.inputs} targets={args.targets} | "
        f"{rate:.0f} examples/s ({args.steps * args.batch} examples in {seconds:.2f} s, "
        f"{seconds / args.steps * 1000:.1f} ms per paired batch)"
    )


if __name__ == "__main__":
    main()
