"""workbench.make_private: a hand-written loop on the engine of `workbench train` gives its adapter and epsilon."""

from __future__ import annotations

import pytest
from hf_helpers import collator, config, lora, max_diff, prepared

from workbench.engine.losses import per_example_loss
from workbench.session import Session
from workbench.store.runs import RunStore


def test_a_hand_written_loop_gives_workbench_trains_adapter_and_epsilon_and_is_stored():
    from workbench import make_private
    from workbench.engine.trainer import make_optimizer

    summary = Session(config(max_steps=3, noise_seed=5)).run()
    p = prepared(max_steps=3, noise_seed=5)
    params = [prm for _, prm in p.model.named_parameters() if prm.requires_grad]
    optimizer, scheduler = make_optimizer(params, p.config, 3)  # AdamW with the linear schedule, as the run's
    private = make_private(p.model, optimizer, dataset=p.train_tok, expected_batch_size=16, physical_batch_size=4,
                           max_steps=3, noise_seed=5, name="by-hand")  # fmt: skip
    p.model.eval()
    for micro_batches in private.loader(p.train_tok, collator(p)):
        for batch in micro_batches:
            losses, _ = per_example_loss(p.model, batch, task="causal_lm")
            private.backward(losses)
        private.step()
        scheduler.step()
    summary_here = private.end()
    assert private.steps_done == 3 and summary_here["status"] == "finished"
    assert private.epsilon == pytest.approx(summary["epsilon"], rel=1e-12)
    assert max_diff(lora(summary["adapter_dir"]), lora(p.model)) < 1e-5
    events = RunStore().events(private.run_id)
    assert [e.kind for _, e in events] == ["run_started", "step", "step", "step", "run_ended"]


def test_the_sampler_draws_poisson_batches_from_the_key_and_add_remove_needs_a_public_size():
    from torch import nn

    from workbench.config import ConfigError
    from workbench.private import make_private

    model = nn.Sequential(nn.Linear(4, 2))  # any model whose trainable layers the hooks cover
    a = make_private(model, None, dataset_size=1000, expected_batch_size=50, max_steps=40, noise_seed=2, store=None)
    b = make_private(model, None, dataset_size=1000, expected_batch_size=50, max_steps=40, noise_seed=2, store=None)
    sizes = [len(x) for x in a.batch_sampler]
    assert sizes == [len(x) for x in b.batch_sampler] and len(set(sizes)) > 5  # seeded: reproducible; sizes vary
    assert 30 < sum(sizes) / len(sizes) < 70
    with pytest.raises(ConfigError, match="public_dataset_size"):
        make_private(model, None, dataset_size=1000, expected_batch_size=50, max_steps=4, neighboring="add_remove")
    c = make_private(model, None, dataset_size=1000, public_dataset_size=900, expected_batch_size=50, max_steps=4,
                     neighboring="add_remove", store=None)  # fmt: skip
    assert c.plan.sample_rate == pytest.approx(50 / 900) and c.plan.expected_batch_size == pytest.approx(50)
