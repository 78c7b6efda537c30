"""The sample generations the dashboards show (engine/evaluate.py generate_samples), in the form a run trains on:
with labelled answers (the demo's routing) the answer the model ranks first, checked against a forward pass
over each whole candidate answer; the greedy line cut at the first line break and at response_max_tokens."""

from __future__ import annotations

import contextlib

import torch
from factories import TINY_RUN

from workbench.config import RunConfig
from workbench.engine.data import encode_prompt
from workbench.engine.evaluate import Answers, answer_choices, generate_samples


def test_samples_show_the_answer_the_model_ranks_first_and_one_line_of_generation():
    from workbench.engine.trainer import prepare

    p = prepare(RunConfig(**dict(TINY_RUN, data="demo", response_max_tokens=3, max_steps=1)))
    choices = answer_choices(p.val, p.tokenizer)
    answers = Answers.of(p.val, p.tokenizer, choices)
    assert choices is not None and answers is not None
    samples = generate_samples(
        p.model,
        p.tokenizer,
        p.train.eval_prompts,
        device=p.device,
        max_new_tokens=24,
        autocast=contextlib.nullcontext,
        response_max_tokens=3,
        answers=answers,
    )
    assert len(samples) == len(p.train.eval_prompts) > 0
    for messages, sample in zip(p.train.eval_prompts, samples):
        # the oracle: each whole candidate answer after the prompt, its token where the answers diverge
        prompt = encode_prompt(p.tokenizer, messages)
        scores = []
        for name in p.val.label_names:
            answer = p.tokenizer(p.val.answer_template.format(label=name), add_special_tokens=False)["input_ids"]
            ids = torch.tensor([prompt + answer], device=p.device)
            with torch.no_grad():
                logits = p.model(input_ids=ids).logits[0]
            at = len(prompt) + choices.offset
            scores.append(float(logits[at - 1, answer[choices.offset]]))
        best = p.val.label_names[max(range(len(scores)), key=scores.__getitem__)]
        assert sample["output"] == p.val.answer_template.format(label=best), (sample, scores)
        assert "\n" not in sample["generated"]
        assert (
            len(p.tokenizer(sample["generated"], add_special_tokens=False)["input_ids"]) <= 3 + 1
        )  # spaces retokenise
    # without labelled answers: the greedy line alone
    plain = generate_samples(
        p.model,
        p.tokenizer,
        p.train.eval_prompts[:1],
        device=p.device,
        max_new_tokens=24,
        autocast=contextlib.nullcontext,
    )
    assert set(plain[0]) == {"prompt", "output"} and "\n" not in plain[0]["output"]
