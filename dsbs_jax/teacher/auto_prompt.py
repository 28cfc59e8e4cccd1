"""Few-shot prompts built from a task's own rows, with no exemplar written by a person.

The paper's first limitation is that every new task needs hand-written chain-of-thought
exemplars. Following Auto-CoT (Zhang et al., 2022), `build` picks k diverse questions from
the task's training rows, asks the teacher for each zero-shot ("Let's think step by step",
ending in the task's answer format), and keeps an answer as an exemplar only when it can be
trusted: it parses, and its label equals the gold label where the row has one, or agrees with
a strict majority of several samples where it has none. Each cluster offers its questions
nearest the centre first, `candidates` at most; a cluster none of whose answers is trusted
gives no exemplar (the report says so).

Diversity comes from k-means over TF-IDF vectors of the questions: no model to download, the
same clusters for the same rows and seed, and enough to separate question types by their
words. Auto-CoT clusters Sentence-BERT embeddings, which an offline machine does not have;
the student's own T5 encoder is not trained to embed sentences, so its distances say little
before training.

The prompt keeps the layout of the dataset's packaged prompt where there is one (its template,
instruction and input fields: only the exemplars differ), and otherwise uses `Q: {input}\\nA:`
with the dataset's registered answer format or `teacher_outputs.DEFAULT_ANSWER_FORMAT`,
which the prompt then writes down (`answer_format`) so that its outputs parse as it says.
"""

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from dsbs_jax.data import teacher_outputs
from dsbs_jax.teacher import prompts, voting

TRIGGER = "Let's think step by step."
TEMPLATE = "{cut_at} {{input}}\nA:"

# Per input, `samples` raw outputs (None: a request that failed): a teacher's `generate`.
Ask = Callable[[Sequence[str], int], list[list[str | None]]]


class AutoPromptError(ValueError):
    """No prompt can be built from these rows with this teacher: the message says why."""


@dataclasses.dataclass(frozen=True)
class Row:
    """A training row: the model input and its gold label (None when the rows have none)."""

    input: str
    gold: str | None


@dataclasses.dataclass(frozen=True)
class Search:
    """How hard to look: `exemplars` clusters, `candidates` questions tried per cluster, and
    `samples` zero-shot answers per question that has no gold label (they vote)."""

    exemplars: int = 8
    candidates: int = 4
    samples: int = 3
    seed: int = 0

    def __post_init__(self):
        for name, value in dataclasses.asdict(self).items():
            if name != "seed" and value < 1:
                raise ValueError(f"{name} must be at least 1, got {value}")


def skeleton(dataset: str) -> prompts.Prompt:
    """A prompt without exemplars for `dataset`: its packaged prompt's layout, or the default
    one with the dataset's answer format (written into the prompt when not registered)."""
    name = f"auto-{dataset}"
    if dataset in prompts.packaged_names():
        packaged = prompts.load_prompt(dataset)
        if packaged.dataset == dataset:
            return dataclasses.replace(packaged, name=name, exemplars=())
    registered = teacher_outputs.ANSWER_FORMATS.get(dataset)
    fmt = registered or teacher_outputs.DEFAULT_ANSWER_FORMAT
    return prompts.Prompt(
        name=name,
        dataset=dataset,
        instruction=(
            f"Answer the question step by step, then write '{fmt.marker}' followed by the "
            f"{fmt.label_description}."
        ),
        template=TEMPLATE.format(cut_at=fmt.cut_at),
        exemplars=(),
        answer_format=None if registered else fmt,
    )


def zero_shot(base: prompts.Prompt) -> prompts.Prompt:
    """`base` asking one question with no exemplar: the instruction (which names the answer
    marker) before the query and the trigger after it, for completion models too."""
    instruction = base.instruction.replace("{", "{{").replace("}", "}}")
    template = f"{instruction}\n\n{base.template} {TRIGGER}"
    return dataclasses.replace(base, template=template, exemplars=())


def diverse_clusters(texts: Sequence[str], k: int, seed: int) -> list[list[int]]:
    """k groups of similar texts (k-means over TF-IDF), each listed nearest its centre first;
    groups in the order of their nearest text. Fewer groups when there are fewer distinct
    texts."""
    from sklearn.cluster import KMeans  # only for an automatic prompt
    from sklearn.feature_extraction.text import TfidfVectorizer

    k = min(k, len(set(texts)))
    try:
        vectors = TfidfVectorizer(sublinear_tf=True).fit_transform(texts)
    except ValueError as error:  # no word in any text
        raise AutoPromptError(f"cannot compare the rows' inputs: {error}") from None
    kmeans = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(vectors)
    distances = kmeans.transform(vectors)
    groups = []
    for cluster in range(k):
        members = np.flatnonzero(kmeans.labels_ == cluster)
        order = np.lexsort((members, distances[members, cluster]))  # ties: first row first
        groups.append([int(i) for i in members[order]])
    return sorted((g for g in groups if g), key=lambda g: g[0])


def trusted_output(
    outputs: Sequence[str | None],
    gold: str | None,
    fmt: teacher_outputs.AnswerFormat,
    matches: voting.Matcher,
) -> str | None:
    """The first output whose label is right (the gold one, or a strict majority's without
    gold), cut where the teacher went on to invent a next question; None when none is."""
    texts = [output or "" for output in outputs]
    parsed = [teacher_outputs.parse_with(fmt, text) for text in texts]
    labels = [p.label if p.parsed else None for p in parsed]
    target = gold if gold is not None else voting.strict_majority(labels, matches)
    if target is None:
        return None
    for text, label in zip(texts, labels, strict=True):
        if label is not None and matches(target, label):
            return text.split(fmt.cut_at, 1)[0].strip()
    return None


def build(
    base: prompts.Prompt, rows: Sequence[Row], ask: Ask, search: Search
) -> tuple[prompts.Prompt, dict]:
    """A few-shot prompt laid out as `base` with exemplars from `rows`, answered by `ask`
    (a teacher prompted with `zero_shot(base)`), and a report of the search."""
    if not rows:
        raise AutoPromptError("no rows to choose exemplars from")
    fmt = base.answer_format or teacher_outputs.answer_format(base.dataset)
    matches = voting.label_matcher(base.dataset)
    groups = diverse_clusters([row.input for row in rows], search.exemplars, search.seed)
    chosen: dict[int, prompts.Exemplar] = {}
    tried = [0] * len(groups)
    requests = 0
    for attempt in range(search.candidates):
        asked = [g for g, group in enumerate(groups) if g not in chosen and attempt < len(group)]
        for samples, batch in _by_samples(asked, groups, attempt, rows, search.samples).items():
            questions = [rows[groups[g][attempt]] for g in batch]
            answers = ask([row.input for row in questions], samples)
            requests += samples * len(batch)
            for g, row, outputs in zip(batch, questions, answers, strict=True):
                tried[g] += 1
                output = trusted_output(outputs, row.gold, fmt, matches)
                if output is not None:
                    chosen[g] = prompts.Exemplar(row.input, output)
    if not chosen:
        raise AutoPromptError(
            f"none of the teacher's zero-shot answers to {sum(tried)} questions was right "
            f"(parsed by {base.dataset!r}'s answer format, marker {fmt.marker!r}, and checked "
            "against the gold label or the samples' majority): check the teacher with a "
            "hand-written --prompt, or raise --candidates"
        )
    exemplars = tuple(chosen[g] for g in sorted(chosen))
    try:
        prompt = dataclasses.replace(base, exemplars=exemplars)
    except prompts.PromptError as error:
        raise AutoPromptError(f"the built prompt does not validate: {error}") from None
    report = {
        "method": "k-means over TF-IDF of the inputs; zero-shot answers kept when right",
        "rows": len(rows),
        "rows_with_gold": sum(row.gold is not None for row in rows),
        "clusters": [
            {"size": len(members), "tried": tried[g], "exemplar": g in chosen}
            for g, members in enumerate(groups)
        ],
        "exemplars": len(exemplars),
        "requests": requests,
    }
    return prompt, report


def _by_samples(
    asked: list[int], groups: list[list[int]], attempt: int, rows: Sequence[Row], samples: int
) -> dict[int, list[int]]:
    """The groups to ask, by how many samples their question needs: 1 with gold, else
    `samples` (so that they can vote)."""
    batches: dict[int, list[int]] = {}
    for g in asked:
        needed = 1 if rows[groups[g][attempt]].gold is not None else samples
        batches.setdefault(needed, []).append(g)
    return batches
