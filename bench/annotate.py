"""Annotation throughput: `dsbs-annotate` against a local OpenAI-compatible server that
answers after a fixed latency, at several concurrencies, in requests per second.

A teacher LLM takes hundreds of milliseconds per answer, so what decides how long
annotating a dataset takes is how many requests are in flight. The server here
(`tests/openai_server.py`) holds every request for `--latency` seconds and serves at most
`--server_limit` at once (the rest queue), as a real server at capacity does: throughput
should grow with `--concurrency` up to `server_limit / latency` requests/s and stay there.
The whole binary is timed (reading the input, prompts, parsing, voting, writing rows and the
release layout), on synthetic word problems whose answers are the rule-based teacher's.

    python bench/annotate.py [--examples 1000] [--latency 0.2] [--server_limit 16]
        [--concurrency 1 8 32] [--endpoint completions|chat]

Concurrency 1 at 200 ms takes `examples * 0.2` s (200 s for 1,000): shrink `--examples`
on a busy machine.
"""

import argparse
import json
import pathlib
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from openai_server import FakeOpenAI, synthetic_run_flags  # noqa: E402

from dsbs_jax.data import synthetic  # noqa: E402
from dsbs_jax.programs import annotate  # noqa: E402


def log(message: str) -> None:
    """Progress goes to stderr so that stdout holds only the result line."""
    print(message, file=sys.stderr, flush=True)


def write_input(directory: pathlib.Path, examples: list[synthetic.Example]) -> pathlib.Path:
    path = directory / "input.jsonl"
    rows = [
        {"id": e.id, "question": e.problem.question, "answer": str(e.problem.answer)}
        for e in examples
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def time_run(
    args: argparse.Namespace,
    concurrency: int,
    answers: dict[str, str],
    input_path: pathlib.Path,
    output_dir: pathlib.Path,
) -> tuple[float, int]:
    """Seconds for one whole run at `concurrency`, and the requests the server received."""
    with FakeOpenAI(answers, latency=args.latency, max_concurrency=args.server_limit) as server:
        argv = [
            *synthetic_run_flags(server, input_path, output_dir),
            f"--endpoint={args.endpoint}",
            f"--concurrency={concurrency}",
        ]
        start = time.perf_counter()
        if annotate.main(argv) != 0:
            raise SystemExit(f"dsbs-annotate failed at concurrency {concurrency}")
        return time.perf_counter() - start, len(server.received)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=int, default=1000)
    parser.add_argument("--latency", type=float, default=0.2, help="seconds per request")
    parser.add_argument("--server_limit", type=int, default=16, help="requests served at once")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--endpoint", choices=("completions", "chat"), default="completions")
    args = parser.parse_args()
    examples = synthetic.generate_splits(num_train=0, num_validation=0, num_test=args.examples)[
        "test"
    ]
    answers = {e.problem.question: e.teacher.text for e in examples}
    figures = []
    with tempfile.TemporaryDirectory() as directory:
        directory = pathlib.Path(directory)
        input_path = write_input(directory, examples)
        for concurrency in args.concurrency:
            log(f"concurrency {concurrency}: {args.examples} examples ...")
            output_dir = directory / f"out_{concurrency}"
            seconds, requests = time_run(args, concurrency, answers, input_path, output_dir)
            figures.append(
                f"concurrency {concurrency}: {requests / seconds:.1f} req/s, {seconds:.1f} s"
            )
    ceiling = args.server_limit / args.latency
    print(
        f"annotate examples={args.examples} latency={args.latency * 1000:.0f} ms "
        f"server_limit={args.server_limit} endpoint={args.endpoint} | "
        + " | ".join(figures)
        + f" | server ceiling {ceiling:.0f} req/s"
    )


if __name__ == "__main__":
    main()
