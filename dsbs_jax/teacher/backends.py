"""What `dsbs-annotate` needs of a teacher, whatever serves it.

An HTTP endpoint (`openai.OpenAITeacher`) and an in-process seq2seq model
(`seq2seq.Seq2SeqTeacher`) differ in everything but this: given model inputs, return each
one's raw chain-of-thought outputs, and say exactly which teacher and decoding settings
wrote them, so that a resumed run knows whether earlier rows are its own. A backend may also
offer `stats() -> dict` (its request counters), which the manifest then records.
"""

from collections.abc import Iterator, Sequence
from typing import NamedTuple, Protocol

from dsbs_jax.teacher.confidence import Tokens
from dsbs_jax.teacher.prompts import Prompt


class Answer(NamedTuple):
    """One output's text and, when asked for and given, its tokens' log-probabilities."""

    text: str
    tokens: Tokens | None


class TeacherError(Exception):
    """The teacher cannot serve this run at all (wrong key, URL or model): stop, don't retry."""


class Teacher(Protocol):
    # The prompt each input is asked in; `--prompt auto` swaps the zero-shot one it asked
    # candidates with for the one it built.
    prompt: Prompt

    @property
    def description(self) -> dict:
        """The teacher and its decoding settings, as JSON-able values and without secrets:
        part of the annotations' fingerprint and of the manifest."""

    def generate(self, inputs: Sequence[str], samples: int) -> list[list[str | None]]:
        """Per input, `samples` raw outputs; None for a request that failed after retries."""

    def stream(self, inputs: Sequence[str], samples: int) -> Iterator[tuple[int, list]]:
        """(index, its `samples` `Answer`s or None) for each input as soon as all of them are
        in, in any order: a caller that writes each down loses at most the requests in flight
        when it is killed."""
