"""`dsbs-prepare`: build the TFDS datasets from the paper's release layout, and report.

    dsbs-prepare --dataset cqa|svamp|esnli|anli1|asdiv|synthetic|NAME|all \
        --manual_dir DIR --data_dir DIR [--task_module MODULE ...]

Builds each dataset (TFDS skips one that is already built, so re-running is cheap), trains
the synthetic dataset's own SentencePiece vocabulary, and prints per split the rows, the
teacher outputs that did not parse, and the teacher's label accuracy against gold. `all`
builds every dataset whose folder is in the manual dir, and the synthetic one. A user's
dataset NAME is known once `--task_module` imports the module that declares it
(`datasets.declare`, or `tasks.jsonl.jsonl_dataset` for JSONL rows).
"""

import argparse
import contextlib
import sys

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from dsbs_jax import console
from dsbs_jax.data import datasets, release, synthetic
from dsbs_jax.data.builders import builder as dataset_builder

SYNTHETIC = "synthetic"


def build(
    dataset: str, manual_dir: epath.Path | None, data_dir: epath.Path
) -> tfds.core.DatasetBuilder:
    """Build one dataset (a no-op when already built); return its builder."""
    if dataset != SYNTHETIC and (manual_dir is None or not (manual_dir / dataset).is_dir()):
        raise release.ReleaseError(
            f"{dataset}: no folder {dataset}/ in the manual dir {manual_dir}"
        )
    builder = dataset_builder(dataset)(data_dir=str(data_dir))
    config = tfds.download.DownloadConfig(manual_dir=str(manual_dir) if manual_dir else None)
    if not builder.is_prepared():
        print(f"dsbs-prepare: building {builder.name} in {builder.data_dir}", file=sys.stderr)
    # TFDS announces a download (there is none: the data is local) on stdout.
    quiet = (
        contextlib.nullcontext() if console.libraries_shown() else contextlib.redirect_stdout(None)
    )
    with quiet:
        builder.download_and_prepare(download_config=config)
    if dataset == SYNTHETIC:
        vocabulary = data_dir / builder.name / "sentencepiece.model"
        if not vocabulary.exists():
            synthetic.train_vocabulary(_texts(builder), vocabulary)
    return builder


def _examples(builder: tfds.core.DatasetBuilder, split: str) -> list[release.Example]:
    def text(value: np.ndarray | bytes) -> str:
        return value.decode() if isinstance(value, bytes) else str(value)

    return [
        release.Example(
            id=text(row["id"]),
            input=text(row["input"]),
            label=text(row["label"]),
            teacher_output=text(row["teacher_output"]),
            teacher_rationale=text(row["teacher_rationale"]),
            teacher_label=text(row["teacher_label"]),
            teacher_parsed=bool(row["teacher_parsed"]),
        )
        for row in tfds.as_numpy(builder.as_dataset(split=split))
    ]


def _texts(builder: tfds.core.DatasetBuilder) -> list[str]:
    examples = [e for split in builder.info.splits for e in _examples(builder, split)]
    questions, outputs = [e.input for e in examples], [e.teacher_output for e in examples]
    return list(synthetic.vocabulary_texts(questions, outputs))


def summary_rows(builder: tfds.core.DatasetBuilder, dataset: str) -> list[dict]:
    """One row per built split: rows, parse failures and teacher accuracy (from the data)."""
    return [
        {
            "dataset": dataset,
            "split": split,
            **release.split_summary(_examples(builder, split), dataset),
        }
        for split in builder.info.splits
    ]


def format_table(rows: list[dict]) -> str:
    header = f"{'dataset':<10} {'split':<11} {'rows':>7} {'unparsed':>9} {'teacher correct':>22}"
    lines = [header, "-" * len(header)]
    for r in rows:
        correct = f"{r['teacher_correct']:,} / {r['rows']:,} ({r['teacher_accuracy']:.1%})"
        name = f"{r['dataset']:<10} {r['split']:<11}"
        lines.append(f"{name} {r['rows']:>7,} {r['parse_failures']:>9,} {correct:>22}")
    return "\n".join(lines)


def requested(dataset: str, manual_dir: epath.Path | None) -> list[str]:
    """The datasets to build; `all` with a manual dir must find at least one in it."""
    if dataset != "all":
        return [dataset]
    if manual_dir is None:
        return [SYNTHETIC]
    present = [d for d in datasets.DATASETS if d != SYNTHETIC and (manual_dir / d).is_dir()]
    if not present:
        names = ", ".join(d for d in datasets.DATASETS if d != SYNTHETIC)
        raise release.ReleaseError(f"{manual_dir}: no dataset folder ({names}) in the manual dir")
    return [*present, SYNTHETIC]


def import_task_modules(modules: list[str]) -> None:
    """Import users' task modules, which declare their datasets (SeqIO and the task
    registry are imported only when there are some)."""
    if modules:
        from tasks import registry

        registry.import_modules(modules)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dsbs-prepare", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--dataset",
        required=True,
        help=f"{', '.join(datasets.DATASETS)}, a --task_module's, or all",
    )
    parser.add_argument("--manual_dir", type=epath.Path, help="the release layout's folder")
    parser.add_argument("--data_dir", type=epath.Path, required=True, help="TFDS data dir")
    parser.add_argument(
        "--task_module",
        action="append",
        default=[],
        help="a module that declares datasets, imported first (repeatable)",
    )
    console.setup(parser, argv)
    args = parser.parse_args(argv)
    try:
        import_task_modules(args.task_module)
    except ValueError as error:  # the task registry's ConfigError
        parser.error(f"--task_module: {error}")
    if args.dataset not in [*datasets.DATASETS, "all"]:
        parser.error(
            f"--dataset {args.dataset!r}: unknown (expected one of "
            f"{', '.join(datasets.DATASETS)} or all; your own dataset's name once "
            "--task_module imports the module declaring it)"
        )
    rows = []
    try:
        for dataset in requested(args.dataset, args.manual_dir):
            rows += summary_rows(build(dataset, args.manual_dir, args.data_dir), dataset)
    except release.ReleaseError as error:
        print(f"dsbs-prepare: {error}", file=sys.stderr)
        return 2
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
