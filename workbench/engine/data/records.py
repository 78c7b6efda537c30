"""The records every reader produces: `Record`, `Dataset`, `DataError`, the schema constants and the raw `_Table`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from workbench.errors import UserError

SCHEMAS = ("prompt_response", "alpaca", "chat", "text", "classification")
ROLES = ("prompt", "response", "instruction", "input", "output", "messages", "text", "label", "user_id")
FORMATS = (".jsonl", ".json", ".csv", ".tsv", ".parquet")
IGNORE_INDEX = -100  # label value the loss skips (torch.nn.CrossEntropyLoss default)

# Column names recognised for each role without configuration (matched case-insensitively).
_ALIASES: dict[str, tuple[str, ...]] = {
    "messages": ("messages", "conversations"),
    "instruction": ("instruction",),
    "input": ("input",),
    "output": ("output",),
    "prompt": ("prompt", "question", "query"),
    "response": ("response", "answer", "completion"),
    "text": ("text", "sentence"),  # "sentence": GLUE-style TSV (SST-2)
    "label": ("label",),
    "user_id": ("user_id", "userid"),
}
# schema -> (required roles, optional roles), in the order a schema is tried.
_SCHEMA_ROLES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "chat": (("messages",), ("label", "user_id")),
    "alpaca": (("instruction", "output"), ("input", "label", "user_id")),
    "prompt_response": (("prompt", "response"), ("label", "user_id")),
    "classification": (("text", "label"), ("user_id",)),
    "text": (("text",), ("user_id",)),
}
_SCHEMA_HELP = (
    "prompt_response (prompt, response), alpaca (instruction, optional input, output), "
    "chat (messages: a list of {role, content}), text (text), "
    "classification (text, label); each with an optional user_id"
)
_CHAT_ROLES = {
    "system": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "bot": "assistant",
    "model": "assistant",
}


class DataError(UserError, ValueError):
    """A problem with the user's data; str(err) is one message saying where, what and what to do."""


@dataclass(frozen=True)
class Record:
    """One training example, whatever the file looked like.

    Instruction data (prompt_response, alpaca, chat) is held as chat `messages`; plain text and
    classification use `text`. `label` is the class (classification) or the task label of
    instruction data; `user_id` is the person the example belongs to (unit of user-level DP).
    """

    messages: tuple[dict, ...] | None
    text: str | None
    label: str | None
    user_id: str | None
    line: int | None = None


@dataclass(frozen=True)
class Dataset:
    """A loaded, validated dataset. `columns` maps each role to the column actually used."""

    name: str
    schema: str
    task: str
    records: tuple[Record, ...]
    columns: dict[str, str]
    label_names: tuple[str, ...] | None
    answer_template: str | None = None
    eval_prompts: tuple[tuple[dict, ...], ...] = ()

    def __len__(self) -> int:
        return len(self.records)

    @property
    def num_users(self) -> int | None:
        """Distinct users, or None when the data has no user_id."""
        users = {r.user_id for r in self.records if r.user_id is not None}
        return len(users) if users else None


@dataclass
class _Table:
    name: str  # shown in messages: the file name
    rows: list[tuple[int | None, dict]]  # (line or row number, row)
    columns: list[str]
    unit: str = "line"  # "line" (text files) or "row" (parquet, hub)

    def where(self, number: int | None) -> str:
        return self.name if number is None else f"{self.name} {self.unit} {number}"


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:200] if text else type(err).__name__


def _preview(value: Any, limit: int = 60) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str) if not isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
