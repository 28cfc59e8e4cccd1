"""`dsbs-annotate --save_topk K`: an offline teacher's top-k log-probabilities for tasks.

    dsbs-annotate --save_topk K --tasks TASK[,TASK...] --backend seq2seq --checkpoint PATH
        --split train --output_dir DIR [--data_dir DIR] [--vocabulary SPM]
        [--task_module MODULE ...] [--max_input_length 1024] [--max_tokens 256]
        [--batch_size 8] [--model_parallelism 1] [--train_fraction F [--seed S]]

For each task, the teacher is run teacher-forced on the task's own examples (its inputs,
with their "predict: " or "explain: " prefix, and its targets: labels or rationales, as the
student will train on them) and its k most likely tokens and their log-probabilities at
each target position go to `DIR/topk/{task}/{split}/` (`dsbs_jax.data.topk_store`).
Training reads them with `TEACHER_TOPK_DIR = 'DIR/topk'`, the teacher out of memory. Runs
that use `--max_input_length` as their inputs length and at most `--max_tokens` as their
targets length can read the store. With `--train_fraction F` (and `--seed S`), only the
training subsample of a run with TRAIN_FRACTION F and SEED S is scored, F of the cost: the
subsets of one seed are nested, so the store serves the runs of that seed with fractions
up to F, and refuses the others before they train.
"""

import argparse

import numpy as np

from dsbs_jax import cli, files, progress
from dsbs_jax.data import pairing, sources, topk_store

TOPK_DIR = "topk"


def run(args: argparse.Namespace) -> int:
    """Score every example of each task's split and write its store."""
    from dsbs_jax.run_tasks import check_prepared
    from dsbs_jax.teacher.topk import TopKScorer
    from tasks import registry

    if args.backend != "seq2seq" or not args.checkpoint:
        raise cli.UsageError("--save_topk needs --backend seq2seq and --checkpoint")
    task_names = [name for name in args.tasks.split(",") if name] if args.tasks else []
    if not task_names:
        raise cli.UsageError("--save_topk needs --tasks: the tasks whose targets to score")
    root = str(args.output_dir / TOPK_DIR)
    try:
        registry.register(
            args.data_dir,
            args.vocabulary or registry.DEFAULT_VOCABULARY,
            args.train_fraction,
            args.seed or 0,
            modules=args.task_module or (),
        )
        for task_name in task_names:
            check_prepared(task_name)
        scorer = TopKScorer(
            args.checkpoint, args.save_topk, args.batch_size, args.model_parallelism
        )
    except (ValueError, FileNotFoundError) as error:  # gin_utils.ConfigError is a ValueError
        raise cli.UsageError(str(error)) from None
    lengths = {"inputs": args.max_input_length, "targets": args.max_tokens}
    teacher = {
        "checkpoint": files.absolute(args.checkpoint),
        "checkpoint_content": files.fingerprint(args.checkpoint),
        "config_vocab_size": scorer.config.vocab_size,
    }
    for task_name in task_names:
        try:
            examples = pairing.task_examples(task_name, args.split, lengths)
        except ValueError as error:
            raise cli.UsageError(f"--tasks {task_name}: {error}") from None
        path = score_task(scorer, examples, root, task_name, args.split, lengths, teacher)
        cli.say(
            "dsbs-annotate",
            f"wrote the top-{args.save_topk} log-probabilities of {task_name} to {path}",
        )
    return 0


def score_task(scorer, examples, root: str, task: str, split: str, lengths, teacher) -> str:
    """Write one task's store from its converted examples, batch by batch, with progress."""
    total = int(examples.reduce(0, lambda count, _: count + 1))
    writer = topk_store.StoreWriter(root, task, split)
    counter = progress.Counter(total)
    done = 0
    for batch in examples.batch(scorer.batch_size).as_numpy_iterator():
        ids, logprobs = scorer(batch["encoder_input_tokens"], batch["decoder_input_tokens"])
        lengths_of_targets = np.count_nonzero(batch["decoder_target_tokens"], axis=1)
        for row, length in enumerate(lengths_of_targets):
            example_hash = int(batch[pairing.EXAMPLE_HASH][row, 0])
            targets = batch["decoder_target_tokens"][row, :length]
            writer.add(example_hash, targets, ids[row, :length], logprobs[row, :length])
        done += len(lengths_of_targets)
        counter.update(done, force=done == total)
    subsample = sources.subsample(task) if split == "train" else (1.0, 0)
    return writer.close(scorer.k, lengths, scorer.config.vocab_size, teacher, *subsample)
