"""Tokenising: a `Dataset` -> `TokenizedExample`s (chat template, response-only loss, truncation) -> tensors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import torch

from workbench.engine.data.records import IGNORE_INDEX, DataError, Dataset, Record, _first_line

# ---------------------------------------------------------------------------------------------
# Tokenising
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenizedExample:
    """Token ids of one example. `labels` are causal-LM targets aligned with input_ids
    (IGNORE_INDEX on prompt tokens; the model shifts them); `label_id` is the class index."""

    input_ids: tuple[int, ...]
    labels: tuple[int, ...] | None
    label_id: int | None
    user_id: str | None
    prompt_len: int


@dataclass(frozen=True)
class TokenizeStats:
    """What tokenisation did: how many examples were cut to max_seq_len or dropped."""

    num_records: int
    num_truncated: int
    num_dropped: int  # the response was truncated away entirely
    dropped_lines: tuple[int | None, ...]
    lengths: tuple[int, ...]  # full token length of every record, before truncation
    max_seq_len: int


class TokenizedDataset(list):
    """list[TokenizedExample] that also carries the `TokenizeStats` of the call that made it."""

    def __init__(self, examples: Iterable[TokenizedExample], stats: TokenizeStats):
        super().__init__(examples)
        self.stats = stats


def tokenize_dataset(
    ds: Dataset,
    tokenizer,
    *,
    max_seq_len: int,
    model_max_length: int | None = None,
    response_max_tokens: int | None = None,
) -> TokenizedDataset:
    """Token ids and targets for every record; the loss counts response tokens only.

    Instruction/chat data goes through `tokenizer.chat_template` when set, else the plain
    "### Instruction: / ### Response:" format; EOS follows each response. Sequences over
    `max_seq_len` lose prompt tokens from the left first; an example left with no response
    token to learn is dropped. Counts are in the result's `.stats`. ``response_max_tokens``: each final
    response is cut after its first N tokens (they alone are targets), a rule applied to each example on its
    own, so the rest of the dataset never changes what one example becomes.
    """
    limit = model_max_length if model_max_length is not None else _tokenizer_limit(tokenizer)
    if max_seq_len < 2:
        raise DataError(f"max_seq_len must be at least 2 tokens; got {max_seq_len}.")
    if limit is not None and max_seq_len > limit:
        raise DataError(
            f"max_seq_len {max_seq_len} is longer than the model's context window "
            f"({limit} tokens). Set max_seq_len to at most {limit}."
        )
    encoder = _Encoder(tokenizer, ds.name)
    out, lengths, truncated, dropped = [], [], 0, []
    label_index = {name: i for i, name in enumerate(ds.label_names or ())}
    for rec in ds.records:
        if ds.task == "classification":
            ids, n = encoder.classification(rec.text, max_seq_len)
            lengths.append(n)
            truncated += n > max_seq_len
            if rec.label not in label_index:
                raise DataError(
                    f"{ds.name} line {rec.line}: label {rec.label!r} is not one of "
                    f"{list(label_index)}. Use align_labels(train, val) to tokenise "
                    "a validation set with the training labels."
                )
            out.append(TokenizedExample(tuple(ids), None, label_index[rec.label], rec.user_id, 0))
            continue
        ids, labels, prompt_len = encoder.causal(rec)
        if response_max_tokens is not None:
            ids, labels = ids[: prompt_len + response_max_tokens], labels[: prompt_len + response_max_tokens]
        lengths.append(len(ids))
        if len(ids) > max_seq_len:
            truncated += 1
            ids, labels, prompt_len = _truncate(ids, labels, prompt_len, max_seq_len)
        if all(x == IGNORE_INDEX for x in labels[1:]):  # labels[0] is never a target (shift)
            dropped.append(rec.line)
            continue
        out.append(TokenizedExample(tuple(ids), tuple(labels), None, rec.user_id, prompt_len))
    stats = TokenizeStats(len(ds), truncated, len(dropped), tuple(dropped), tuple(lengths), max_seq_len)
    return TokenizedDataset(out, stats)


def encode_prompt(tokenizer, messages: Sequence[dict]) -> list[int]:
    """Token ids of a prompt (chat turns ending with the user's) ready for generation, formatted
    exactly as `tokenize_dataset` formats training prompts. Append response ids from
    `tokenizer(text, add_special_tokens=False)` to score a candidate answer."""
    return _Encoder(tokenizer, "prompt").prompt(list(messages))


def _tokenizer_limit(tokenizer) -> int | None:
    limit = getattr(tokenizer, "model_max_length", None)
    return int(limit) if isinstance(limit, int) and 0 < limit < 10**7 else None  # 1e30 = unset


def _truncate(ids: list[int], labels: list[int], prompt_len: int, max_len: int) -> tuple[list[int], list[int], int]:
    """Keep the whole response when it fits, cutting the prompt from the left; otherwise keep
    up to half the window of prompt (its end) and cut the response from the right."""
    response_len = len(ids) - prompt_len
    keep_prompt = max(max_len - response_len, min(prompt_len, max_len // 2))
    start, stop = prompt_len - keep_prompt, prompt_len + (max_len - keep_prompt)
    return ids[start:stop], labels[start:stop], keep_prompt


class _Encoder:
    """Formats records as the model sees them: segments of (token ids, is-target)."""

    def __init__(self, tokenizer, name: str):
        self.tok, self.name = tokenizer, name
        self.eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        self.eos_text = tokenizer.eos_token if self.eos else None
        self.template = bool(getattr(tokenizer, "chat_template", None))
        bos = tokenizer.bos_token_id
        leading = tokenizer("", add_special_tokens=True)["input_ids"][:1]
        self.bos = leading if bos is not None and leading == [bos] else []

    def ids(self, text: str) -> list[int]:
        return list(self.tok(text, add_special_tokens=False)["input_ids"]) if text else []

    def classification(self, text: str, max_len: int) -> tuple[list[int], int]:
        ids = self.tok(text, add_special_tokens=True)["input_ids"]
        if len(ids) <= max_len:
            return list(ids), len(ids)
        cut = self.tok(text, add_special_tokens=True, truncation=True, max_length=max_len)
        return list(cut["input_ids"]), len(ids)

    def causal(self, rec: Record) -> tuple[list[int], list[int], int]:
        """(input_ids, labels, prompt_len); prompt_len = tokens before the last response."""
        if rec.messages is None:
            ids = self.bos + self.ids(rec.text) + self.eos
            return ids, list(ids), 0
        segments = self._chat_segments(list(rec.messages), rec.line)
        ids, labels = [], []
        for seg_ids, target in segments:
            ids += seg_ids
            labels += seg_ids if target else [IGNORE_INDEX] * len(seg_ids)
        last = segments[-1]  # the final response (content + EOS) is always the last segment
        return ids, labels, len(ids) - len(last[0])

    def prompt(self, messages: list[dict]) -> list[int]:
        if self.template:
            return self.ids(self._render(messages, True, None))
        return self.bos + self.ids(render_plain(messages))

    def _chat_segments(self, messages: list[dict], line: int | None) -> list[tuple[list[int], bool]]:
        """Alternating (prompt ids, False), (reply ids + EOS, True); the last is the final reply.

        Prompt and reply are tokenised separately, as at generation time (prompt ids, then the
        model's tokens); template text after the final reply (e.g. a newline) is dropped.
        """
        spans = self._template_spans(messages, line) if self.template else _plain_spans(messages)
        segments, prompt = [], ""
        for text, target in spans:
            if target:
                bos = self.bos if not (self.template or segments) else []
                head = bos + self.ids(prompt)
                segments += [(head, False), (self.ids(text) + self.eos, True)]
                prompt = ""
            else:
                prompt += text
        return segments

    def _template_spans(self, messages: list[dict], line: int | None) -> list[tuple[str, bool]]:
        """Split the rendered conversation into (text, is-target) spans, one target per assistant
        turn: the text from where the generation prompt ends to the end of the reply."""
        full = self._render(messages, False, line)
        spans, pos = [], 0
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            head = self._render(messages[:i], True, line) if i else ""
            start = len(head)
            found = full.find(message["content"], start) if full.startswith(head) else -1
            if found < 0 or start < pos:  # template not prefix-stable: train the last turn only
                return [(self._render(messages[:-1], True, line), False), (messages[-1]["content"], True)]
            end = found + len(message["content"])
            spans += [(full[pos:start], False), (full[start:end], True)]
            pos = end + (len(self.eos_text) if self.eos_text and full.startswith(self.eos_text, end) else 0)
        return spans

    def _render(self, messages: list[dict], generation: bool, line: int | None) -> str:
        try:
            return self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)
        except Exception as err:  # jinja raises for conversations a template does not accept
            where = f"{self.name} line {line}" if line else self.name
            raise DataError(
                f"{where}: the model's chat template rejected this conversation "
                f"({_first_line(err)}). Fix the turn order (system, user, assistant, "
                "...) or remove the example."
            ) from None


def _plain_spans(messages: Sequence[dict]) -> list[tuple[str, bool]]:
    spans, sep = [], ""
    for m in messages:
        if m["role"] == "system":
            spans.append((sep + m["content"] + "\n\n", False))
            sep = ""
        elif m["role"] == "user":
            spans.append((f"{sep}### Instruction:\n{m['content']}\n\n### Response:\n", False))
            sep = ""
        else:
            spans.append((m["content"], True))
            sep = "\n\n"
    return spans


def render_plain(messages: Sequence[dict]) -> str:
    """The plain format used when a tokenizer has no chat template (without EOS), e.g.
    >>> render_plain([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}])
    '### Instruction:\\nHi\\n\\n### Response:\\nYo'
    """
    return "".join(t for t, _ in _plain_spans(messages))


# ---------------------------------------------------------------------------------------------
# Collation
# ---------------------------------------------------------------------------------------------


def collate(
    batch: Sequence[TokenizedExample], *, pad_id: int, padding_side: str = "right", task: str | None = None
) -> dict[str, torch.Tensor]:
    """Pad a batch: input_ids and attention_mask (B, T) long; labels (B, T) with IGNORE_INDEX on
    padding for causal LM, or (B,) class ids for classification. An empty batch (Poisson
    sampling can draw one) gives (0, 0) tensors, and labels (0,) when task="classification"."""
    if padding_side not in ("right", "left"):
        raise ValueError(f"padding_side must be 'right' or 'left'; got {padding_side!r}.")
    B = len(batch)
    T = max((len(ex.input_ids) for ex in batch), default=0)
    classify = batch[0].label_id is not None if batch else task == "classification"
    if any((ex.label_id is not None) != classify for ex in batch):
        raise ValueError("collate: a batch mixes classification and language-model examples.")
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)  # (B, T)
    attention = torch.zeros((B, T), dtype=torch.long)  # (B, T)
    labels = torch.full((B, T), IGNORE_INDEX, dtype=torch.long)  # (B, T), causal only
    for i, ex in enumerate(batch):
        n = len(ex.input_ids)
        cols = slice(0, n) if padding_side == "right" else slice(T - n, T)
        input_ids[i, cols] = torch.tensor(ex.input_ids, dtype=torch.long)
        attention[i, cols] = 1
        if not classify:
            labels[i, cols] = torch.tensor(ex.labels, dtype=torch.long)
    if classify:
        labels = torch.tensor([ex.label_id for ex in batch], dtype=torch.long)  # (B,)
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}
