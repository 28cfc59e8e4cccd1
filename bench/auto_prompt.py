"""`--prompt auto` beside the hand-written prompt, on the synthetic task and on CQA's release.

The teachers are stand-ins served by `tests/openai_server.py`, and neither reads its prompt:
the synthetic one is the rule-based teacher sampled afresh for each request (each answer
wrong with the generator's 15% chance), CQA's replays the paper's released PaLM output for
each question. So this measures the automatic prompt's own work, not how an LLM answers it:

- the exemplars the search picks: how many of their answers are right (checked against the
  gold labels, or by a vote of `--auto_samples` answers for rows without them), the
  requests it spent, and (synthetic) how many of the task's six kinds of event (add, add
  groups, remove, remove groups, multiply, share out) they show, beside the same number of
  rows taken at random, over several seeds: what the clustering adds;
- the teacher's accuracy and parse rate on the test rows under each prompt: equal by
  construction with these teachers, and so are the annotations (the students trained on
  them would be the same). Comparing students needs a teacher that reads its prompt.

    python bench/auto_prompt.py [--train 1000] [--test 300] [--exemplars 8] [--seeds 5]
        [--cqa ../shared/datasets]
"""

import argparse
import json
import pathlib
import sys
import tempfile

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from openai_server import MODEL, FakeOpenAI  # noqa: E402

from dsbs_jax.data import release, synthetic, teacher_outputs  # noqa: E402
from dsbs_jax.programs import annotate  # noqa: E402
from dsbs_jax.teacher import auto_prompt, voting  # noqa: E402

WRONG = 0.15
SAMPLES = 7  # distinct teacher answers per synthetic question (sample j: seed j)


def kinds(problem: synthetic.WordProblem) -> set[str]:
    """The problem's kinds of event: its operation, and whether it is over groups."""
    return {e.op + (" groups" if len(e.factors) == 2 else "") for e in problem.events}


def write_rows(path: pathlib.Path, examples: list[synthetic.Example], gold: bool = True) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [
        {
            "id": e.id,
            "question": e.problem.question,
            **({"answer": str(e.problem.answer)} if gold else {}),
        }
        for e in examples
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return f"jsonl:{path}"


def annotate_run(server: FakeOpenAI, output_dir: pathlib.Path, split: str, *flags: str) -> dict:
    """One dsbs-annotate run against `server`; its manifest."""
    argv = [
        f"--split={split}",
        f"--base_url={server.base_url}",
        f"--model={MODEL}",
        f"--output_dir={output_dir}",
        "--concurrency=16",
        "--seed=0",
        *flags,
    ]
    if annotate.main(argv) != 0:
        raise SystemExit(f"dsbs-annotate {' '.join(argv)} failed")
    return json.loads((output_dir / annotate.manifest_file(split)).read_text())


def built_prompt(output_dir: pathlib.Path) -> dict:
    return json.loads((output_dir / annotate.AUTO_PROMPT_FILE).read_text())


def right_exemplars(built: dict, gold: dict[str, str]) -> int:
    """How many of a built prompt's exemplars state their row's gold label."""
    fmt = teacher_outputs.answer_format(built["dataset"])
    matches = voting.label_matcher(built["dataset"])
    return sum(
        matches(gold[e["input"]], teacher_outputs.parse_with(fmt, e["output"]).label)
        for e in built["exemplars"]
    )


def accuracy_line(name: str, manifest: dict) -> str:
    counts = manifest["counts"]
    parsed = 1 - counts["parse_failures"] / counts["outputs"]
    return (
        f"  test rows, {name} prompt: teacher accuracy "
        f"{manifest['teacher_accuracy']['accuracy']:.1%}, parsed {parsed:.1%}"
    )


def synthetic_figures(args: argparse.Namespace, work: pathlib.Path) -> None:
    splits = synthetic.generate_splits(num_train=args.train, num_validation=0, num_test=args.test)
    rng = np.random.default_rng(0)
    problems = [e.problem for split in splits.values() for e in split]
    answers = {
        p.question: [synthetic.resample(p, WRONG, rng).text for _ in range(SAMPLES)]
        for p in problems
    }
    gold = {p.question: str(p.answer) for p in problems}
    by_question = {p.question: p for p in problems}
    train = splits["train"]
    every_kind = set().union(*(kinds(e.problem) for e in train))
    fields = [
        "--input_field=question",
        "--label_field=answer",
        "--name=sums",
        f"--exemplars={args.exemplars}",
    ]
    print(
        f"synthetic: {len(train)} training rows, {args.test} test rows, "
        f"each answer wrong with p={WRONG}"
    )
    with FakeOpenAI(answers) as server:
        sources = {"gold": write_rows(work / "sums" / "train.jsonl", train)}
        sources["vote"] = write_rows(work / "unlabelled" / "sums.jsonl", train, gold=False)
        for check, source in sources.items():
            out = work / f"auto_{check}"
            annotate_run(
                server, out, "train", f"--input={source}", "--prompt=auto", *fields, "--limit=0"
            )
            built = built_prompt(out)
            shown = set().union(*(kinds(by_question[e["input"]]) for e in built["exemplars"]))
            requests = built["provenance"]["report"]["requests"]
            print(
                f"  auto prompt, answers checked by {check}: {len(built['exemplars'])} exemplars, "
                f"{right_exemplars(built, gold)} right, {requests} requests, "
                f"{len(shown)} of {len(every_kind)} kinds of event"
            )
        texts = [e.problem.question for e in train]
        clustered, random = [], []
        for seed in range(args.seeds):
            centres = [g[0] for g in auto_prompt.diverse_clusters(texts, args.exemplars, seed)]
            picked = np.random.default_rng(seed).choice(len(texts), args.exemplars, replace=False)
            for chosen, into in ((centres, clustered), (picked, random)):
                into.append(len(set().union(*(kinds(train[i].problem) for i in chosen))))
        print(
            f"  kinds of event shown by {args.exemplars} rows, mean of {args.seeds} seeds: "
            f"cluster centres {np.mean(clustered):.1f}, random rows {np.mean(random):.1f}"
        )
        test = write_rows(work / "test.jsonl", splits["test"])
        test_flags = [f"--input={test}", "--input_field=question", "--label_field=answer"]
        hand = annotate_run(server, work / "hand", "test", *test_flags, "--prompt=synthetic")
        auto = annotate_run(
            server,
            work / "auto_gold",
            "test",
            *test_flags,
            "--prompt=auto",
            *fields[2:],
            f"--exemplars_from={sources['gold']}",
        )
    print(accuracy_line("hand-written", hand))
    print(accuracy_line("auto", auto))


def cqa_figures(args: argparse.Namespace, work: pathlib.Path) -> None:
    splits = release.read_dataset(args.cqa, "cqa")  # train, held-out validation, test
    replay = {e.input: e.teacher_output for split in splits.values() for e in split}
    release_dir = args.cqa / "cqa"
    print(
        f"cqa: {len(splits['train']) + len(splits['validation'])} training rows, "
        f"{len(splits['test'])} test rows, "
        "the released PaLM outputs replayed"
    )
    rows = {
        split: f"--input=jsonl:{release_dir / f'cqa_{split}.json'}" for split in ("train", "test")
    }
    gold = {e.input: e.label for split in splits.values() for e in split}
    with FakeOpenAI(replay) as server:
        out = work / "cqa_auto"
        flags = ["--dataset=cqa", "--prompt=auto", f"--exemplars={args.exemplars}"]
        annotate_run(server, out, "train", rows["train"], *flags, "--limit=0")
        built = built_prompt(out)
        print(
            f"  auto prompt: {len(built['exemplars'])} exemplars, {right_exemplars(built, gold)} "
            f"right, {built['provenance']['report']['requests']} requests"
        )
        hand = annotate_run(
            server, work / "cqa_hand", "test", rows["test"], "--dataset=cqa", "--prompt=cqa"
        )
        auto = annotate_run(
            server,
            out,
            "test",
            rows["test"],
            *flags,
            f"--exemplars_from={rows['train'].split('=', 1)[1]}",
        )
    print(accuracy_line("hand-written", hand))
    print(accuracy_line("auto", auto))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train", type=int, default=1000)
    parser.add_argument("--test", type=int, default=300)
    parser.add_argument("--exemplars", type=int, default=8)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--cqa", type=pathlib.Path, default=ROOT.parent / "shared" / "datasets")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        synthetic_figures(args, pathlib.Path(work))
        cqa_figures(args, pathlib.Path(work))


if __name__ == "__main__":
    main()
