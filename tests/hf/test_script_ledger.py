"""The ledger's reach for script runs (issue 30): a make_private or DPTrainer run on the rows of a file is the same
units as a `workbench train` run on that file, so all of them count in one total; tokenised-only rows are not
records, keep their own group and the row says why.

The total is checked against dp_accounting's PLD accountant composing events the test builds from each run's
own sigma, q and steps (as tests/store/test_ledger_reach.py does).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from dp_accounting import dp_event, privacy_accountant
from dp_accounting.pld import pld_privacy_accountant
from hf_helpers import config, prepared, training_args

from workbench.engine import data as data_mod
from workbench.engine.fingerprint import dataset_fingerprint, unit_identities
from workbench.engine.losses import per_example_loss
from workbench.planning.plan import make_plan
from workbench.session import Session
from workbench.store.ledger import Ledger
from workbench.store.runs import RunStore

RELATION = {
    "replace_one": privacy_accountant.NeighboringRelation.REPLACE_ONE,
    "add_remove": privacy_accountant.NeighboringRelation.ADD_OR_REMOVE_ONE,
}


def write_rows(path: Path, n: int = 40) -> tuple[str, list[dict]]:
    rows = [
        {"prompt": f"Can I move my appointment {i}?", "response": f"Department: Scheduling {i % 3}"} for i in range(n)
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(path), rows


def oracle(runs: list[tuple[float, float, int]], *, delta: float, neighboring: str) -> float:
    """dp_accounting's PLD of (sigma, q, steps) runs composed."""
    accountant = pld_privacy_accountant.PLDAccountant(RELATION[neighboring], value_discretization_interval=1e-3)
    for sigma, q, steps in runs:
        step = dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(sigma))
        accountant.compose(dp_event.SelfComposedDpEvent(step, steps))
    return accountant.get_epsilon(delta)


def test_script_runs_on_a_files_rows_count_in_one_total_with_workbench_train_on_that_file(tmp_path):
    datasets = pytest.importorskip("datasets")
    from workbench import make_private
    from workbench.hf import DPTrainer, PrivacyArguments

    path, rows = write_rows(tmp_path / "inbox.jsonl")
    # `workbench train` on the file (secret mode; a fixed sigma: no calibration to wait for)
    summary = Session(config(data=path, max_steps=2, noise_multiplier=1.0)).run()

    p = prepared(data=path, max_steps=2)
    tokenised = data_mod.tokenize_dataset(data_mod.load_dataset(path), p.tokenizer, max_seq_len=32)
    assert len(tokenised) == len(rows)

    def collate(examples):
        return data_mod.collate(examples, pad_id=p.tokenizer.pad_token_id)

    # a hand-written loop on the file's rows as a script reads them (json.loads per line)
    params = [prm for prm in p.model.parameters() if prm.requires_grad]
    private = make_private(p.model, torch.optim.AdamW(params, lr=2e-3), dataset=rows, expected_batch_size=16,
                           physical_batch_size=4, max_steps=2, noise_multiplier=1.0, name="loop")  # fmt: skip
    p.model.eval()
    for indices in private.batch_sampler:
        for micro in private.micro_batches(indices):
            losses, _ = per_example_loss(p.model, collate([tokenised[int(i)] for i in micro]), task="causal_lm")
            private.backward(losses)
        private.step()
    private.end()

    # a Trainer on a datasets.Dataset of the same rows, tokenised beside their text columns
    q = prepared(data=path, max_steps=2)
    hf_rows = datasets.Dataset.from_list(
        [{**r, "input_ids": list(e.input_ids), "labels": list(e.labels)} for r, e in zip(rows, tokenised)]
    )

    def hf_collate(features):
        return collate([data_mod.TokenizedExample(tuple(f["input_ids"]), tuple(f["labels"]), None, None, 0)
                        for f in features])  # fmt: skip

    trainer = DPTrainer(
        model=q.model,
        args=training_args(tmp_path / "trainer", max_steps=2),
        train_dataset=hf_rows,
        data_collator=hf_collate,
        privacy_args=PrivacyArguments(target_epsilon=None, noise_multiplier=1.0, expected_batch_size=16),
        run_name="trainer",
    )
    trainer.train()

    ledger = Ledger(RunStore())
    ids = {summary["run_id"], private.run_id, trainer.privacy.run_id}
    (group,) = [d for d in ledger.datasets() if ids & {e.run_id for e in d.entries}]
    assert {e.run_id for e in group.entries} == ids  # one group: the same examples, whoever read them
    assert len({e.fingerprint for e in group.entries}) == 1  # the same set of units (the whole file each time)
    assert not any(e.note for e in group.entries)

    runs = [
        (summary["noise_multiplier"], summary["sample_rate"], summary["steps"]),
        (private.plan.noise_multiplier, private.plan.sample_rate, private.steps_done),
        (trainer.privacy.plan.noise_multiplier, trainer.privacy.plan.sample_rate, trainer.privacy.steps_done),
    ]
    relation = {e.neighboring for e in group.entries}
    assert len(relation) == 1 and group.total.neighboring == relation.pop()
    delta = max(e.delta for e in group.entries)
    expected = oracle(runs, delta=delta, neighboring=group.total.neighboring)
    assert group.total.epsilon == pytest.approx(expected, rel=0.01)
    assert group.total.epsilon > max(e.epsilon for e in group.entries)  # composes all three, not the largest


def test_tokenised_only_rows_keep_their_own_group_and_the_row_says_so(tmp_path):
    from torch import nn

    from workbench import make_private

    path, rows = write_rows(tmp_path / "inbox.jsonl", n=30)
    ds = data_mod.load_dataset(path)
    ledger = Ledger(RunStore())
    plan = config(data=path, max_steps=2, noise_multiplier=1.0)  # the `workbench train` row of the file
    train_row = ledger.record_run(
        run_id="train",
        name="train",
        prepared=SimpleNamespace(
            plan=make_plan(plan, dataset_size=len(ds)),
            config=plan,
            dataset_fingerprint=dataset_fingerprint(ds, privacy_unit="example"),
            dataset_name=Path(path).name,
            dataset_units=unit_identities(ds),
        ),
        steps=2,
        seeded=False,
    )

    model = nn.Sequential(nn.Linear(4, 1))  # a loop on input ids only: features from the first four ids
    tokenised = [{"input_ids": [len(r["prompt"]), i, len(r["response"]), 1]} for i, r in enumerate(rows)]
    private = make_private(model, torch.optim.SGD(model.parameters(), lr=0.1), dataset=tokenised,
                           expected_batch_size=8, max_steps=2, noise_multiplier=1.0, name="ids")  # fmt: skip
    for indices in private.batch_sampler:
        for micro in private.micro_batches(indices):
            x = torch.tensor([tokenised[int(i)]["input_ids"] for i in micro], dtype=torch.float32)
            private.backward(model(x).pow(2).sum(-1))
        private.step()
    private.end()

    groups = {frozenset(e.run_id for e in d.entries): d for d in ledger.datasets()}
    assert set(groups) == {frozenset({"train"}), frozenset({private.run_id})}  # not linked to the file's run
    (row,) = groups[frozenset({private.run_id})].entries
    assert row.fingerprint != train_row.fingerprint
    assert "30 of 30 training rows are not records" in row.note and "columns input_ids" in row.note
    assert groups[frozenset({private.run_id})].total.epsilon == pytest.approx(row.epsilon, rel=0.01)

    # the same rows with their text kept are the file's units again (a row's identity is its own record)
    with_text = make_private(model, None, dataset=[{**r, **t} for r, t in zip(rows, tokenised)], expected_batch_size=8,
                             max_steps=2, noise_multiplier=1.0, store=None)  # fmt: skip
    assert with_text.data.dataset_units == unit_identities(ds) and with_text.data.dataset_note is None
