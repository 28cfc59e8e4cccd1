"""Which of a teacher's sampled answers agree: self-consistency (Wang et al., 2022).

Labels are compared by their dataset's rule (SVAMP's equations by value, CQA's choices as
text), so that "(6 / 2)" and "(3)" vote together. `dsbs-annotate` keeps the rationales that
agree with the vote; `auto_prompt` trusts a zero-shot answer as an exemplar only when it does.
"""

from collections.abc import Callable, Sequence

from dsbs_jax.data import datasets, metrics

Matcher = Callable[[str, str], bool]


def label_matcher(dataset: str) -> Matcher:
    """The dataset's rule for two labels being the same answer; exact (stripped) otherwise."""
    spec = datasets.DATASETS.get(dataset)
    return spec.label_matches if spec else metrics.labels_match


def clusters(labels: Sequence[str | None], matches: Matcher) -> list[list[str]]:
    """The parsed labels grouped by `matches` with each group's first label, in order of first
    appearance (None, an unparsed output, is in no group)."""
    groups: list[list[str]] = []
    for label in labels:
        if label is None:
            continue
        group = next((g for g in groups if matches(g[0], label)), None)
        if group is None:
            groups.append([label])
        else:
            group.append(label)
    return groups


def majority(labels: Sequence[str | None], matches: Matcher) -> str | None:
    """The label of the largest group of matching labels (ties: the group that starts
    first); None when no label parsed. A group is named by its first label."""
    groups = clusters(labels, matches)
    return max(groups, key=len)[0] if groups else None


def strict_majority(labels: Sequence[str | None], matches: Matcher) -> str | None:
    """The label more than half of all samples (unparsed ones included) agree on, or None."""
    groups = clusters(labels, matches)
    largest = max(groups, key=len) if groups else []
    return largest[0] if 2 * len(largest) > len(labels) else None
