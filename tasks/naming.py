"""The one place task and mixture names are built (users' scripts rely on them)."""

KINDS = ("label", "rationale", "cot")


def task_name(dataset: str, kind: str, source: str | None = None) -> str:
    """`dsbs_{ds}_label_{gt|llm}`, `dsbs_{ds}_rationale` or `dsbs_{ds}_cot_{gt|llm}`."""
    if kind not in KINDS:
        raise ValueError(f"unknown task kind {kind!r}: expected one of {KINDS}")
    if kind == "rationale":
        return f"dsbs_{dataset}_rationale"
    if source not in ("gt", "llm"):
        raise ValueError(f"a {kind} task needs source 'gt' or 'llm', got {source!r}")
    return f"dsbs_{dataset}_{kind}_{source}"


def mixture_name(kind: str, source: str | None = None) -> str:
    """`dsbs_label_{gt|llm}` and `dsbs_rationale`: over every dataset sharing T5's vocabulary."""
    return task_name("", kind, source).replace("dsbs__", "dsbs_")
