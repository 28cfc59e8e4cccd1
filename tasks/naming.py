"""The one place task and mixture names are built (users' scripts rely on them)."""

KINDS = ("label", "rationale", "cot")


def _name(prefix: str, kind: str, source: str | None) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown task kind {kind!r}: expected one of {KINDS}")
    if kind == "rationale":
        return f"{prefix}_rationale"
    if source not in ("gt", "llm"):
        raise ValueError(f"a {kind} task needs source 'gt' or 'llm', got {source!r}")
    return f"{prefix}_{kind}_{source}"


def task_name(dataset: str, kind: str, source: str | None = None) -> str:
    """`dsbs_{ds}_label_{gt|llm}`, `dsbs_{ds}_rationale` or `dsbs_{ds}_cot_{gt|llm}`."""
    return _name(f"dsbs_{dataset}", kind, source)


def mixture_name(kind: str, source: str | None = None) -> str:
    """`dsbs_label_{gt|llm}` and `dsbs_rationale`: over every dataset sharing T5's vocabulary."""
    return _name("dsbs", kind, source)
