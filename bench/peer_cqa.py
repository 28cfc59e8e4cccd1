"""Our `dsbs-train` against the reference pipeline's semantics, on the real CQA training set.

The reference is google-research/distilling-step-by-step: Hugging Face's Trainer over
`T5ForConditionalGeneration`, its batches padded to the longest example. This benchmark
restates that pipeline with `transformers` and PyTorch and runs our trainer as a user runs
it, on the same examples from the same initial weights, and compares examples per second.

Data. `dsbs_cqa` is built from the paper's release (`--manual_dir`, default
`../shared/datasets`) into a temporary TFDS dir, and a stand-in SentencePiece vocabulary is
trained on CQA text (`data.stand_in_vocabulary`; T5's own model is not on this machine, and
tokenization cost hardly depends on the vocabulary size; the model keeps T5's vocabulary
size). Both sides train on our TFDS `train` split: the release's rows with the reference's
10% validation hold-out removed, input text formatted and teacher outputs parsed as the
reference's `data_utils.py` does (`dsbs_jax.data.release`, checked identical to it row for
row), keeping the examples whose teacher output parsed (the reference trains on all rows;
the few unparsed ones are dropped here, as our trainer drops them).

The reference side, as the official `run.py` / `train_utils.py` set it up for method
dsbs with gold labels: a tokenizer over the stand-in model as `AutoTokenizer` loads T5's
(`T5Tokenizer.from_pretrained`, EOS appended); `"predict: " + input` -> gold label and
`"explain: " + input` -> teacher rationale, tokenized once before training (its
`datasets.map`) with truncation to 1,024 input and 256 target tokens. The token ids are
checked equal to our SeqIO tasks' for the first `CHECK_EXAMPLES` examples. Per step: a
shuffled batch (`--seed`) collated by `DataCollatorForSeq2Seq` (padding to the batch's
longest, labels padded with -100, decoder inputs from the model) separately for the predict
and explain halves of the same examples, as its `TaskPrefixDataCollator`; two forward
passes, loss 0.5 * predict + 0.5 * explain, `backward()`, `clip_grad_norm_(1.0)`,
`torch.optim.AdamW(lr=5e-5, weight_decay=0)` and a linear decay to 0 at the run's last step
(`get_linear_schedule_with_warmup(opt, 0, steps)`): what HF's Trainer does with those
arguments. float32, the paper grid's dropout on both sides (0.1, as the reference keeps
Hugging Face's T5 v1.1 configs' rate), denormals flushed, 2 torch threads. `--steps` steps
are timed after `--warmup` steps, collation included (as it is in a real run), and as many
again after our run: the machine's speed drifts between the two sides' turns (on a shared
host, by a third within minutes), and the reference timed on both sides of ours weighs the
drift on both. Its figure is its examples over the seconds of both stretches. Positions
computed per example: the padded batch shape of both halves, encoder and decoder.

Our side: `python -m dsbs_jax.train` in a subprocess, with the paper grid's gin files for
T5.1.1-small, CQA and method dsbs-gt, and so their lengths and batching (nothing restated
here): bound are only MODEL_DIR, DATA_DIR, VOCABULARY, BATCH_SIZE (`--batch`), TRAIN_STEPS
(warm-up + timed steps), INITIAL_CHECKPOINT_PATH (the reference's initial weights, saved by
`checkpoints.save_hf`), CHECKPOINT_PERIOD and EVAL_PERIOD beyond the run, no final
evaluation, a log every step, and a small evaluation at the last step (the trainer always
evaluates there; it comes after the timed steps). `--extra_gin NAME=VALUE` passes further
bindings (say `Data.pack=False`, or `INPUT_LENGTH=64` for a quick smoke test). Its examples
per second are read from the TensorBoard scalars under MODEL_DIR/train, the first `--warmup`
steps (compilation) dropped: their examples (`examples_per_step`) over their seconds. Its
positions per example are its `positions_per_example` scalar. Both sides' non-padding tokens
per second go to stderr.

`--dataset esnli` runs the same on e-SNLI, whose sample has no training split: its
validation files stand in as the training split for both sides (symlinked into a temporary
release folder). The reference's `</s>` between premise and hypothesis is the EOS token on
both sides.

    python bench/peer_cqa.py [--dataset cqa|esnli] [--batch 16] [--steps 5] [--warmup 1]
                             [--seed 0] [--manual_dir DIR] [--extra_gin NAME=VALUE ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from common import SIZES, build_models, cpu_cores, log, setup_torch
from data import ROOT, stand_in_vocabulary

import gin
import tasks
from dsbs_jax import checkpoints, gin_utils
from dsbs_jax.models import T5Config
from dsbs_jax.programs import prepare
from dsbs_jax.writers import read_scalars

if TYPE_CHECKING:
    import tensorflow_datasets as tfds
    import transformers

SIZE = "small"
METHOD = "dsbs-gt"
# The reference's settings (run.py's defaults and the paper's runs).
MAX_INPUT_LENGTH = 1024
MAX_TARGET_LENGTH = 256
ALPHA = 0.5
LEARNING_RATE = 5e-5
MAX_GRAD_NORM = 1.0
TORCH_THREADS = 2
CHECK_EXAMPLES = 32
# The trainer evaluates at its last step whatever EVAL_PERIOD says: on this few examples.
EVAL_EXAMPLES = 8
# The reference's TaskPrefixDataCollator: one batch per half, from the same examples.
HALVES = {"pred": "predict: ", "expl": "explain: "}
# Our run's scalars (`dsbs_jax.progress.Throughput`).
EXAMPLES_PER_SECOND = "examples_per_second"
TOKENS_PER_SECOND = "tokens_per_second"
EXAMPLES_PER_STEP = "examples_per_step"
POSITIONS = "positions_per_example"

Features = dict[str, dict[str, list[int]]]  # half -> input_ids, attention_mask, labels


@dataclasses.dataclass(frozen=True)
class Example:
    id: str
    input: str
    label: str
    rationale: str


@dataclasses.dataclass(frozen=True)
class Throughput:
    """Timed steps' totals."""

    examples: float
    seconds: float
    positions: float  # token positions computed, padding included
    tokens: float  # non-padding input and target tokens

    @property
    def examples_per_second(self) -> float:
        return self.examples / self.seconds

    @property
    def positions_per_example(self) -> float:
        return self.positions / self.examples

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds

    def __add__(self, other: Throughput) -> Throughput:
        pairs = zip(dataclasses.astuple(self), dataclasses.astuple(other), strict=True)
        return Throughput(*(a + b for a, b in pairs))


# -------------------------------------------------------------------------------------------
# Data
# -------------------------------------------------------------------------------------------


def release_dir(dataset: str, manual_dir: pathlib.Path, directory: pathlib.Path) -> pathlib.Path:
    """The release folder to build `dataset` from. e-SNLI's sample has no training split:
    its validation files are linked in as the training split's too."""
    if dataset == "cqa":
        return manual_dir
    source, target = manual_dir / dataset, directory / "release" / dataset
    (target / "llm").mkdir(parents=True)
    for path in [*source.glob("*.json"), *source.glob("llm/*.json")]:
        link = target / path.relative_to(source)
        link.symlink_to(path)
        if "valid" in path.name:
            link.with_name(path.name.replace("valid", "train")).symlink_to(path)
    return target.parent


def read_train(builder: tfds.core.DatasetBuilder) -> list[Example]:
    """Our TFDS `train` split in file order, the examples whose teacher output parsed:
    what our trainer's source keeps."""
    rows = builder.as_dataset(split="train", shuffle_files=False).as_numpy_iterator()
    return [
        Example(
            row["id"].decode(),
            row["input"].decode(),
            row["label"].decode(),
            row["teacher_rationale"].decode(),
        )
        for row in rows
        if row["teacher_parsed"]
    ]


# -------------------------------------------------------------------------------------------
# Our run's configuration, read from its gin files
# -------------------------------------------------------------------------------------------


def gin_files(dataset: str) -> list[str]:
    return [
        f"models/t5_1_1_{SIZE}.gin",
        "runs/paper/paper.gin",
        f"runs/paper/dataset/{dataset}.gin",
        f"runs/paper/method/{METHOD}.gin",
    ]


def _value(value: Any) -> Any:
    """A queried gin value, its macro references evaluated."""
    if isinstance(value, gin.config.ConfigurableReference):
        return value.scoped_configurable_fn()
    return value


@dataclasses.dataclass(frozen=True)
class RunConfig:
    model: T5Config
    lengths: dict[str, int]  # TASK_FEATURE_LENGTHS: inputs, label, rationale
    label_task: str
    rationale_task: str


def run_config(dataset: str, extra_gin: Sequence[str]) -> RunConfig:
    """What our run will train, as its gin files and `extra_gin` bind it."""
    gin_utils.parse(gin_files(dataset), extra_gin)
    try:
        lengths = _value(gin.query_parameter("%TASK_FEATURE_LENGTHS"))
        return RunConfig(
            model=_value(gin.query_parameter("%MODEL_CONFIG")),
            lengths={name: int(_value(length)) for name, length in lengths.items()},
            label_task=_value(gin.query_parameter("%LABEL_TASK")),
            rationale_task=_value(gin.query_parameter("%RATIONALE_TASK")),
        )
    finally:
        gin.clear_config()


# -------------------------------------------------------------------------------------------
# The reference side
# -------------------------------------------------------------------------------------------


def hf_tokenizer(vocabulary: str, directory: pathlib.Path) -> transformers.PreTrainedTokenizerBase:
    """The tokenizer `AutoTokenizer` would load for T5, over the stand-in model (no sentinels)."""
    import transformers

    (directory / "tokenizer").mkdir()
    (directory / "tokenizer" / "spiece.model").symlink_to(vocabulary)
    return transformers.T5Tokenizer.from_pretrained(str(directory / "tokenizer"), extra_ids=0)


def tokenize(
    tokenizer: transformers.PreTrainedTokenizerBase, examples: Sequence[Example]
) -> list[Features]:
    """The reference's `tokenize_function`: both prefixed inputs and both targets."""

    def ids(texts: list[str], max_length: int) -> dict[str, list[list[int]]]:
        return dict(tokenizer(texts, max_length=max_length, truncation=True))

    targets = {
        "pred": ids([e.label for e in examples], MAX_TARGET_LENGTH)["input_ids"],
        "expl": ids([e.rationale for e in examples], MAX_TARGET_LENGTH)["input_ids"],
    }
    features: list[Features] = [{} for _ in examples]
    for half, prefix in HALVES.items():
        inputs = ids([prefix + e.input for e in examples], MAX_INPUT_LENGTH)
        for i, feature in enumerate(features):
            feature[half] = {
                "input_ids": inputs["input_ids"][i],
                "attention_mask": inputs["attention_mask"][i],
                "labels": targets[half][i],
            }
    return features


def check_token_ids(
    examples: Sequence[Example], features: Sequence[Features], config: RunConfig
) -> None:
    """The reference's token ids must be our SeqIO tasks' (same truncation) for the first
    `CHECK_EXAMPLES` training examples."""
    import seqio

    lengths = {"inputs": MAX_INPUT_LENGTH, "targets": MAX_TARGET_LENGTH}
    for half, task_name in (("pred", config.label_task), ("expl", config.rationale_task)):
        task = seqio.get_mixture_or_task(task_name)
        dataset = task.get_dataset(lengths, split="train", shuffle=False, num_epochs=1)
        for index, ours in enumerate(dataset.take(CHECK_EXAMPLES).as_numpy_iterator()):
            theirs = features[index][half]
            same = (
                ours["id"].decode() == examples[index].id
                and ours["inputs"].tolist() == theirs["input_ids"]
                and ours["targets"].tolist() == theirs["labels"]
            )
            if not same:
                raise SystemExit(
                    f"{task_name} example {index} ({examples[index].id}): the reference's "
                    f"token ids differ from ours:\n  ours {ours['inputs'].tolist()} -> "
                    f"{ours['targets'].tolist()}\n  reference {theirs['input_ids']} -> "
                    f"{theirs['labels']}"
                )
    log(f"token ids of the first {CHECK_EXAMPLES} examples: reference = ours, both tasks")


def shuffled_batches(
    features: Sequence[Features], batch: int, seed: int
) -> Iterator[list[Features]]:
    """Batches of a fresh seeded permutation each epoch (the last partial batch dropped)."""
    rng = np.random.default_rng(seed)
    while True:
        order = rng.permutation(len(features))
        for start in range(0, len(order) - batch + 1, batch):
            yield [features[i] for i in order[start : start + batch]]


class ReferenceRun:
    """The reference's training loop, as its Trainer runs it, in stretches of steps: timed
    before and after ours, so that the machine's speed drifting between the two sides'
    turns shows, and weighs on both."""

    def __init__(
        self,
        model: transformers.T5ForConditionalGeneration,
        tokenizer: transformers.PreTrainedTokenizerBase,
        features: Sequence[Features],
        args: argparse.Namespace,
    ):
        import torch
        import transformers

        self.model, self.batch_size = model, args.batch
        self.collator = transformers.DataCollatorForSeq2Seq(tokenizer, model=model)
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=0.0)
        total = args.warmup + 2 * args.steps
        self.schedule = transformers.get_linear_schedule_with_warmup(self.optimizer, 0, total)
        self.batches = shuffled_batches(features, args.batch, args.seed)
        self.step = 0
        model.train()

    def train(self, steps: int, warmup: int = 0) -> Throughput:
        """`warmup` untimed steps, then `steps` timed ones."""
        import torch

        timed = Throughput(0, 0.0, 0, 0)
        for index in range(warmup + steps):
            began = time.perf_counter()
            rows = next(self.batches)
            batch = {half: self.collator([row[half] for row in rows]) for half in HALVES}
            predict, explain = (self.model(**batch[half]).loss for half in HALVES)
            loss = ALPHA * predict + (1 - ALPHA) * explain
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), MAX_GRAD_NORM)
            self.optimizer.step()
            self.schedule.step()
            self.optimizer.zero_grad()
            seconds = time.perf_counter() - began
            self.step += 1
            log(f"reference step {self.step}: loss {loss.item():.4f}, {seconds:.2f} s")
            if index >= warmup:
                halves = batch.values()
                timed += Throughput(
                    self.batch_size,
                    seconds,
                    sum(half["input_ids"].numel() + half["labels"].numel() for half in halves),
                    sum(
                        int(half["attention_mask"].sum() + (half["labels"] != -100).sum())
                        for half in halves
                    ),
                )
        return timed


# -------------------------------------------------------------------------------------------
# Our side
# -------------------------------------------------------------------------------------------


def our_command(
    args: argparse.Namespace,
    model_dir: pathlib.Path,
    data_dir: pathlib.Path,
    vocabulary: str,
    checkpoint: pathlib.Path,
) -> list[str]:
    """`dsbs-train` with the paper's gin files and only the bindings this benchmark needs."""
    total = args.warmup + args.steps
    bindings = {
        "MODEL_DIR": repr(str(model_dir)),
        "DATA_DIR": repr(str(data_dir)),
        "VOCABULARY": repr(vocabulary),
        "INITIAL_CHECKPOINT_PATH": repr(str(checkpoint)),
        "BATCH_SIZE": args.batch,
        "TRAIN_STEPS": total,
        "CHECKPOINT_PERIOD": total + 1,
        "EVAL_PERIOD": total + 1,
        "train.final_eval_splits": [],
        "train.log_period": 1,
        "Evaluation.examples": EVAL_EXAMPLES,
        "Evaluation.batch_size": EVAL_EXAMPLES,
    }
    return [
        sys.executable,
        "-m",
        "dsbs_jax.train",
        *(f"--gin_file={path}" for path in gin_files(args.dataset)),
        *(f"--gin.{name}={value}" for name, value in bindings.items()),
        *(f"--gin.{binding}" for binding in args.extra_gin),
    ]


def our_throughput(model_dir: pathlib.Path, args: argparse.Namespace) -> Throughput:
    """Examples over seconds of the steps after `--warmup` (one log per step), read from
    the run's TensorBoard scalars."""
    scalars = {
        tag: read_scalars(str(model_dir / "train"), tag)
        for tag in (EXAMPLES_PER_SECOND, TOKENS_PER_SECOND, EXAMPLES_PER_STEP, POSITIONS)
    }
    rates = scalars[EXAMPLES_PER_SECOND]
    timed = [step for step in sorted(rates) if step > args.warmup]
    if len(timed) != args.steps:
        raise SystemExit(
            f"our run logged steps {sorted(rates)}; expected 1 to {args.warmup + args.steps}"
        )
    total = Throughput(0, 0.0, 0, 0)
    for step in timed:
        examples = scalars[EXAMPLES_PER_STEP][step]
        seconds = examples / rates[step]
        total += Throughput(
            examples,
            seconds,
            scalars[POSITIONS][step] * examples,
            scalars[TOKENS_PER_SECOND][step] * seconds,
        )
    return total


def run_ours(command: Sequence[str]) -> None:
    """Run `dsbs-train`, its output on our stderr."""
    log("running ours: " + " ".join(command[1:]))
    subprocess.run(command, cwd=ROOT, stdout=sys.stderr, check=True)


# -------------------------------------------------------------------------------------------
# Main
# -------------------------------------------------------------------------------------------


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=("cqa", "esnli"), default="cqa")
    parser.add_argument("--manual_dir", type=pathlib.Path, default=ROOT.parent / "shared/datasets")
    parser.add_argument("--batch", type=int, default=16, help="examples per step")
    parser.add_argument("--steps", type=int, default=5, help="timed steps (after warm-up)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first (compiling)")
    parser.add_argument("--seed", type=int, default=0, help="the reference's shuffling seed")
    parser.add_argument(
        "--extra_gin",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a further gin binding of our run (repeatable), e.g. INPUT_LENGTH=128",
    )
    args = parser.parse_args()
    if args.steps < 1 or args.warmup < 0:
        parser.error("--steps must be at least 1 and --warmup at least 0")
    return args


def figures(throughput: Throughput) -> str:
    return (
        f"{throughput.examples_per_second:.2f} examples/s "
        f"({throughput.positions_per_example:.0f} positions/example)"
    )


def main() -> None:
    args = parse_args()
    config = run_config(args.dataset, args.extra_gin)
    if dataclasses.replace(config.model, dropout_rate=0.0) != SIZES[SIZE]:
        raise SystemExit(f"--extra_gin changed the model: {config.model} is not {SIZES[SIZE]}")
    log(f"our run: lengths {config.lengths} (gin), {config.label_task} + {config.rationale_task}")
    setup_torch(threads=TORCH_THREADS)
    with tempfile.TemporaryDirectory() as directory:
        directory = pathlib.Path(directory)
        log(f"building dsbs_{args.dataset} and a stand-in vocabulary")
        data_dir = directory / "tfds"
        builder = prepare.build(
            args.dataset, release_dir(args.dataset, args.manual_dir, directory), data_dir
        )
        vocabulary = stand_in_vocabulary(args.manual_dir, directory)
        tasks.register(data_dir=str(data_dir), vocabulary_path=vocabulary)

        examples = read_train(builder)
        tokenizer = hf_tokenizer(vocabulary, directory)
        features = tokenize(tokenizer, examples)
        log(f"{len(examples)} training examples, tokenized")
        check_token_ids(examples, features, config)

        params, model = build_models(config.model)
        checkpoint = directory / "initial"
        checkpoints.save_hf(checkpoint, config.model, params)
        del params
        log(f"reference: {args.warmup} + {args.steps} steps of batch {args.batch}")
        reference = ReferenceRun(model, tokenizer, features, args)
        before = reference.train(args.steps, args.warmup)

        model_dir = directory / "model"
        command = our_command(args, model_dir, data_dir, vocabulary, checkpoint)
        run_ours(command)
        ours = our_throughput(model_dir, args)
        log(f"reference: {args.steps} more steps, after ours")
        after = reference.train(args.steps)
    reference = before + after
    log(
        f"non-padding tokens/s: ours {ours.tokens_per_second:.0f}, "
        f"reference {reference.tokens_per_second:.0f}"
    )
    print(
        f"peer {args.dataset} batch={args.batch} model=t5_1_1_{SIZE} dtype={config.model.dtype} "
        f"cpus={cpu_cores()} | ours {figures(ours)} | reference {figures(reference)}, "
        f"{before.examples_per_second:.2f} before ours and {after.examples_per_second:.2f} after | "
        f"ours/reference {ours.examples_per_second / reference.examples_per_second:.2f}x"
    )


if __name__ == "__main__":
    main()
