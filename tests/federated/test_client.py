"""The ClientApp's round (workbench/federated/run.py, train_client) in this process, without Ray: the engine trains
the client's partition; FFA-LoRA sends and trains B only; each round's DP-SGD draws a fresh secret key."""

import numpy as np
import pytest

pytest.importorskip("flwr")

from workbench.config import RunConfig  # noqa: E402
from workbench.federated.options import FederatedOptions  # noqa: E402
from workbench.federated.run import _spec, federation, train_client  # noqa: E402

TINY = dict(model="tiny", batch_size=4, physical_batch_size=8, generate_max_new_tokens=0, eval_max_examples=8)


def fed(level="client", ffa=False, **kw):
    config = RunConfig.from_dict({**TINY, "target_epsilon": 8.0, "max_grad_norm": 1.0, **kw})
    return federation(_spec(config, FederatedOptions(3, 2, 2, "by-user", level, 2, ffa)))


def test_ffa_sends_and_trains_b_only():
    f = fed(ffa=True)
    start = f.arrays()
    assert start and all("lora_B" in k for k in start if "lora" in k) and not any("lora_A" in k for k in start)
    a_before = {n: p.detach().clone() for n, p in f.base.model.named_parameters() if "lora_A" in n}
    out, metrics = train_client(f, 1, start, 1)
    assert set(out) == set(start)
    assert any(not np.allclose(out[k], start[k]) for k in start)  # B moved
    a_after = {n: p for n, p in f.base.model.named_parameters() if "lora_A" in n}
    assert all(np.array_equal(a_before[n].numpy(), a_after[n].detach().numpy()) for n in a_before)  # A did not
    assert metrics["client"] == 1 and metrics["examples"] > 0


def test_plain_lora_sends_a_and_b_and_client_level_training_is_not_private():
    f = fed()
    assert any("lora_A" in k for k in f.arrays())
    assert not f.plan(0).private  # the server's noise is the mechanism; the local steps are plain
    assert f.plan(0).max_grad_norm is None


def test_record_level_rounds_draw_fresh_keys():
    """The same global adapter sent twice to the same client gives two different adapters back: each round's DP-SGD
    samples and noises with a new secret key (a repeated key would let the noise cancel)."""
    f = fed("record", noise_multiplier=1.0, target_epsilon=None)
    assert f.plan(0).private and f.plan(0).steps == 2 * 2  # R x local steps
    start = f.arrays()
    first, _ = train_client(f, 0, start, 1)
    second, _ = train_client(f, 0, start, 1)
    assert any(not np.allclose(first[k], second[k]) for k in start)
