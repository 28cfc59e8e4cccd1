"""Few-shot chain-of-thought prompts that make a teacher LLM write rationales.

A prompt shows the teacher a few worked exemplars and then one query. What the teacher
writes is parsed by its dataset's answer format (`dsbs_jax.data.teacher_outputs`), so a
prompt is only usable if its own exemplars parse under that format, and if a teacher that
goes on to invent the next query gets cut off where it starts. `load_prompt` checks both,
so a broken prompt fails before any teacher call is paid for.

A prompt is a JSON file (the packaged ones are in `PROMPTS_DIR`, one per dataset):

    {
      "name": "cqa",                    # identifies the prompt in logs
      "dataset": "cqa",                 # whose answer format parses the outputs
      "instruction": "...",             # one sentence: the system message for chat models
      "template": "Q: {input}\\nA:",    # str.format template of one query
      "separator": "\\n\\n",            # optional: between exemplars (default two newlines)
      "input_fields": ["premise", "hypothesis"],  # optional: names for the input's parts
      "input_separator": "</s>",        # optional: what the input's parts are joined with
      "answer_format": {"cut_at": "Q:", "marker": "So the answer is"},  # optional: see below
      "exemplars": [{"input": "...", "output": "..."}, ...],
      "provenance": {...}               # optional, ignored: how `--prompt auto` built it
    }

An exemplar's input is the model input as the dataset's builder makes it; its output is the
rationale, the answer marker and the label, as the teacher should write them. The template
may use `{input}` and, when `input_fields` is given, each field (the input split at
`input_separator`, which must give exactly that many parts). Write literal braces as `{{`
and `}}`.

A dataset without a registered answer format (a user's own) gets one from the prompt file:
`answer_format` holds `cut_at` and `marker` and optionally `label_pattern`,
`label_description` and `drop_final_period` (the fields of `teacher_outputs.AnswerFormat`),
and loading the prompt registers it for `dataset`, so the command line alone can annotate a
new dataset. A format that differs from one already registered is refused: it would change
how that dataset's labels are read.
"""

import dataclasses
import hashlib
import json
import pathlib
import string
from typing import Any

from etils import epath

from dsbs_jax.data import teacher_outputs

PROMPTS_DIR = pathlib.Path(__file__).resolve().parent / "prompts"
_REQUIRED = {
    "name": str,
    "dataset": str,
    "instruction": str,
    "template": str,
    "exemplars": list,
}
_OPTIONAL = {
    "separator": str,
    "input_fields": list,
    "input_separator": str,
    "answer_format": dict,
    "provenance": dict,  # how the prompt was made (`--prompt auto`); not part of the prompt
}
_FORMAT_REQUIRED = {"cut_at": str, "marker": str}
_FORMAT_OPTIONAL = {"label_pattern": str, "label_description": str, "drop_final_period": bool}
_EXPECTED = {str: "a string", list: "an array", dict: "an object", bool: "true or false"}


class PromptError(ValueError):
    """A prompt that cannot be used: the message names the file or key and what was expected."""


@dataclasses.dataclass(frozen=True)
class Exemplar:
    """One worked example: a model input and what the teacher should write for it."""

    input: str
    output: str


@dataclasses.dataclass(frozen=True)
class Prompt:
    """A validated few-shot prompt; `text` for completion models, `messages` for chat ones.

    `answer_format`, when given, is registered for `dataset` once the prompt validates
    (None: the dataset's must already be registered).
    """

    name: str
    dataset: str
    instruction: str
    template: str
    exemplars: tuple[Exemplar, ...]
    separator: str = "\n\n"
    input_fields: tuple[str, ...] = ()
    input_separator: str = "</s>"
    answer_format: teacher_outputs.AnswerFormat | None = None

    def __post_init__(self):
        fmt = self._format()
        self._check_template()
        for index, exemplar in enumerate(self.exemplars):
            try:
                query = self.query(exemplar.input)
            except PromptError as error:
                raise PromptError(f"exemplars[{index}].input: {error}") from None
            parsed = teacher_outputs.parse_with(fmt, exemplar.output)
            if not parsed.parsed:
                raise PromptError(
                    f"exemplars[{index}].output does not parse as {self.dataset!r} teacher "
                    f"output: {parsed.problem}"
                )
            continued = teacher_outputs.parse_with(fmt, exemplar.output + self.separator + query)
            if (continued.rationale, continued.label) != (parsed.rationale, parsed.label):
                raise PromptError(
                    f"template: a teacher that goes on to write the next query is not cut off "
                    f"(expected each query to start with {fmt.cut_at!r}, where {self.dataset!r} "
                    "outputs are cut)"
                )
        if self.answer_format is not None:
            teacher_outputs.register_answer_format(self.dataset, self.answer_format)

    def _format(self) -> teacher_outputs.AnswerFormat:
        """The format the outputs are parsed by; checked before validation so that a
        conflicting one is named as such, and registered only after it."""
        if self.answer_format is None:
            return _answer_format(self.dataset)
        registered = teacher_outputs.ANSWER_FORMATS.get(self.dataset)
        if registered not in (None, self.answer_format):
            raise PromptError(
                f"answer_format: dataset {self.dataset!r} already has another answer format "
                f"({registered})"
            )
        return self.answer_format

    def _check_template(self) -> None:
        allowed = ("input", *self.input_fields)
        try:
            fields = [field for _, field, _, _ in string.Formatter().parse(self.template)]
        except ValueError as error:
            raise PromptError(f"template: {error}") from None
        expected = ", ".join(f"{{{name}}}" for name in allowed)
        for field in fields:
            if field is not None and field not in allowed:
                raise PromptError(f"template: unknown field {{{field}}} (expected {expected})")
        if not any(field in allowed for field in fields):
            raise PromptError(f"template: uses no field of the input (expected {expected})")

    def query(self, input: str) -> str:
        """The template filled for one input."""
        fields = {"input": input}
        if self.input_fields:
            parts = input.split(self.input_separator)
            if len(parts) != len(self.input_fields):
                raise PromptError(
                    f"the input has {len(parts)} parts separated by {self.input_separator!r} "
                    f"(expected {len(self.input_fields)}: {', '.join(self.input_fields)})"
                )
            fields.update(zip(self.input_fields, parts, strict=True))
        return self.template.format(**fields)

    def text(self, input: str, exemplars: int | None = None) -> str:
        """The completion prompt: each exemplar's query and output, then the query for `input`.

        `exemplars` keeps only that many first exemplars (None: all), for a model whose
        input is too short for the whole prompt.
        """
        if exemplars is not None and exemplars < 0:
            raise ValueError(f"exemplars must not be negative, got {exemplars}")
        shots = [self.query(e.input) + " " + e.output for e in self.exemplars[:exemplars]]
        return self.separator.join([*shots, self.query(input)])

    def messages(self, input: str) -> list[dict[str, str]]:
        """The chat prompt: the instruction, each exemplar as a user and assistant turn, then
        the query for `input`."""
        messages = [{"role": "system", "content": self.instruction}]
        for exemplar in self.exemplars:
            messages.append({"role": "user", "content": self.query(exemplar.input)})
            messages.append({"role": "assistant", "content": exemplar.output})
        messages.append({"role": "user", "content": self.query(input)})
        return messages

    def to_json(self) -> dict:
        """The prompt as a file `load_prompt` reads back into an equal prompt."""
        data = dataclasses.asdict(self)
        if self.answer_format is None:
            del data["answer_format"]
        return data

    @property
    def sha256(self) -> str:
        """Hex SHA-256 of all fields as canonical JSON: names this exact prompt in manifests."""
        canonical = json.dumps(dataclasses.asdict(self), sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _answer_format(dataset: str) -> teacher_outputs.AnswerFormat:
    try:
        return teacher_outputs.answer_format(dataset)
    except ValueError as error:
        raise PromptError(f"dataset: {error}") from None


def packaged_names() -> list[str]:
    """The names `load_prompt` finds in `PROMPTS_DIR`."""
    return sorted(path.stem for path in PROMPTS_DIR.glob("*.json"))


def load_prompt(name_or_path: str) -> Prompt:
    """A packaged prompt by name (`cqa`, ...), or the prompt in a JSON file, validated."""
    if name_or_path in packaged_names():
        path = epath.Path(PROMPTS_DIR / f"{name_or_path}.json")
    else:
        path = epath.Path(name_or_path)
        if not path.exists() and "/" not in name_or_path and not name_or_path.endswith(".json"):
            raise PromptError(
                f"unknown prompt {name_or_path!r}: expected a packaged prompt "
                f"({', '.join(packaged_names())}) or the path of a JSON file"
            )
    try:
        data = json.loads(path.read_text())
    except OSError as error:
        raise PromptError(f"{path}: cannot read it ({error.strerror or error})") from None
    except ValueError as error:
        raise PromptError(f"{path}: not valid JSON ({error})") from None
    try:
        return _prompt_from_json(data)
    except PromptError as error:
        raise PromptError(f"{path}: {error}") from None


def _prompt_from_json(data: Any) -> Prompt:
    if not isinstance(data, dict):
        raise PromptError(f"holds {_shown(data)} (expected a JSON object)")
    _check_keys(data, _REQUIRED, _OPTIONAL)
    fields = data.get("input_fields", [])
    for index, field in enumerate(fields):
        if not isinstance(field, str) or not field.isidentifier():
            raise PromptError(f"input_fields[{index}] is {_shown(field)} (expected a name)")
    exemplars = []
    for index, exemplar in enumerate(data["exemplars"]):
        if not isinstance(exemplar, dict) or set(exemplar) != {"input", "output"}:
            raise PromptError(
                f"exemplars[{index}] is {_shown(exemplar)} (expected an object with exactly "
                "the keys 'input' and 'output')"
            )
        for key in ("input", "output"):
            if not isinstance(exemplar[key], str):
                found = _shown(exemplar[key])
                raise PromptError(f"exemplars[{index}].{key} is {found} (expected a string)")
        exemplars.append(Exemplar(exemplar["input"], exemplar["output"]))
    answer_format = (
        _answer_format_from_json(data["answer_format"]) if "answer_format" in data else None
    )
    data = {key: value for key, value in data.items() if key != "provenance"}
    return Prompt(
        **{
            **data,
            "exemplars": tuple(exemplars),
            "input_fields": tuple(fields),
            "answer_format": answer_format,
        }
    )


def _check_keys(
    data: dict, required: dict[str, type], optional: dict[str, type], at: str = ""
) -> None:
    """Every required key present, no unknown one, each of its JSON type; `at` prefixes
    the keys named in errors (`answer_format.`)."""
    if unknown := sorted(data.keys() - required.keys() - optional.keys()):
        known = ", ".join([*required, *optional])
        raise PromptError(f"unknown key {at + unknown[0]!r} (expected only {known})")
    for key, kind in (required | optional).items():
        expected = _EXPECTED[kind]
        if key not in data and key in required:
            raise PromptError(f"missing key {at + key!r} (expected {expected})")
        if key in data and not isinstance(data[key], kind):
            raise PromptError(f"{at + key!r} is {_shown(data[key])} (expected {expected})")


def _answer_format_from_json(data: dict) -> teacher_outputs.AnswerFormat:
    _check_keys(data, _FORMAT_REQUIRED, _FORMAT_OPTIONAL, at="answer_format.")
    try:
        return teacher_outputs.AnswerFormat(**data)
    except ValueError as error:
        raise PromptError(f"answer_format: {error}") from None


def _shown(value: object, limit: int = 60) -> str:
    """A JSON value as it appears in the file, shortened for an error message."""
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 3] + "..."
