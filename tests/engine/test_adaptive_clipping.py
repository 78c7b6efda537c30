"""Quantile (adaptive) per-layer clip norms, Andrew et al. 2021 (allocation.py, clipping.py, dp_step.py):

- accounting: sum_l sigma_l^-2 + z_b^-2 = sigma^-2 at every step, and the epsilon is dp_accounting's for sigma,
  the same as a fixed-threshold run's;
- the update rule against its formula, and whole runs whose C_l move toward the quantile from far above and below;
- the released counts: the indicators' sum exactly, their noise of std sigma_b (KS test rejecting 2x and 0.5x)
  from the gradient noise's own generator, rank 0 alone drawing it in data-parallel runs, and the rescaled
  sensitivity of gradient and counts together on real neighbouring datasets;
- bad settings give one clear message naming the key.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from factories import TINY_RUN
from scipy import stats
from test_dp_step import make_batch, per_layer_dp
from test_engine import pld_epsilon  # the dp_accounting PLD oracle
from typer.testing import CliRunner

from workbench.cli import app
from workbench.config import ConfigError, RunConfig
from workbench.engine.allocation import (
    Allocation,
    clip_norms,
    quantile_update,
    solve_sigmas,
    split_budget,
    unclipped_fraction,
)
from workbench.engine.clipping import QuantileClipping
from workbench.engine.distributed import WorkerRandomness
from workbench.engine.dp_step import DPGradient, noised_counts
from workbench.engine.losses import per_example_loss
from workbench.engine.randomness import RunRandomness
from workbench.planning.plan import make_plan
from workbench.session import Session
from workbench.store.runs import RunStore

FAST = dict(TINY_RUN, physical_batch_size=16, max_seq_len=32)
BLOCKS = [f"base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.default" for i in range(4)]


def step_events(store: RunStore, run_id: str) -> list:
    return [e for _, e in store.events(run_id, kinds=("step",))]


# -- accounting ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("share", [0.05, 0.3])
def test_split_budget_keeps_the_total_precision(share):
    sigma = 1.7
    sigma_grad, z_b = split_budget(sigma, share)
    assert sigma_grad**-2 + z_b**-2 == pytest.approx(sigma**-2, rel=1e-12)
    assert sigma_grad == pytest.approx(sigma / math.sqrt(1 - share)) and z_b == pytest.approx(sigma / math.sqrt(share))
    groups = ["a", "b", "c"]
    a = Allocation(
        clip=clip_norms(groups, max_grad_norm=1.0, weights=None),
        sigma=solve_sigmas({"a": 5.0, "b": 1.0, "c": 0.2}, sigma=sigma_grad, bound=3.0),
        count_sigma=z_b,
    )
    assert a.effective_noise_multiplier == pytest.approx(sigma, rel=1e-12)
    assert a.count_noise_std() == pytest.approx(z_b * math.sqrt(3) / 2)
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        split_budget(sigma, 1.0)


def test_quantile_run_spends_exactly_the_budget_of_sigma_like_a_fixed_run():
    sigma, share = 1.2, 0.3
    store = RunStore()
    settings = dict(FAST, max_steps=3, noise_multiplier=sigma, clipping="per_layer", eval_every=100)
    cfg = RunConfig(**settings, clip_allocation="quantile", clip_quantile_share=share)
    s = Session(cfg, store=store)
    summary, steps = s.run(), step_events(store, s.run_id)
    assert summary["status"] == "finished", summary
    qc = summary["quantile_clipping"]
    z_b = qc["count_noise_multiplier"]
    assert qc["budget_share"] == share and qc["quantile"] == 0.5 and qc["learning_rate"] == 0.2
    assert z_b == pytest.approx(sigma / math.sqrt(share), rel=1e-12)
    num_blocks = len(steps[0].module_noise_multiplier)
    # the fixed-threshold run with the same settings, on the same data: its plan is all its accounting
    fixed = make_plan(RunConfig(**settings, clip_allocation="fixed"), dataset_size=summary["dataset_size"])
    assert (fixed.noise_multiplier, fixed.sample_rate, fixed.delta) == (sigma, summary["sample_rate"], summary["delta"])
    for e in steps:
        precision = sum(s**-2 for s in e.module_noise_multiplier.values())
        assert precision == pytest.approx((1 - share) * sigma**-2, rel=1e-9)
        assert precision + z_b**-2 == pytest.approx(sigma**-2, rel=1e-9)
        for g, s in e.module_noise_multiplier.items():  # uniform allocation: each sigma_l grows by 1/sqrt(1-share)
            assert s == pytest.approx(sigma * math.sqrt(num_blocks) / math.sqrt(1 - share), rel=1e-9)
            assert e.module_noise_std[g] == pytest.approx(s * e.module_clip_norm[g])
        assert e.effective_noise_multiplier == pytest.approx(sigma, rel=1e-9)
        oracle = pld_epsilon(summary["sample_rate"], sigma, e.step, summary["delta"], summary["neighboring"])
        assert e.epsilon == pytest.approx(oracle, rel=0.01)
        assert e.epsilon == fixed.epsilon_at(e.step)
        assert set(e.module_unclipped_fraction) == set(e.module_clip_norm)
    assert summary["epsilon"] == fixed.epsilon_at(3) and summary["noise_multiplier"] == sigma
    assert summary["effective_noise_multiplier"] == pytest.approx(sigma, rel=1e-12)


# -- the update rule and the thresholds of whole runs -------------------------------------------------------


def test_the_update_is_geometric_and_still_at_the_quantile():
    clip = {"a": 0.3, "b": 2.0, "c": 1e-3}
    assert quantile_update(clip, {g: 0.7 for g in clip}, quantile=0.7, lr=0.5) == clip
    fraction = {"a": 1.0, "b": 0.0, "c": 0.25}
    out = quantile_update(clip, fraction, quantile=0.4, lr=0.3)
    for g in clip:
        assert out[g] == pytest.approx(clip[g] * math.exp(-0.3 * (fraction[g] - 0.4)), rel=1e-15)
    assert out["a"] < clip["a"] and out["b"] > clip["b"]
    # bbar from centred counts over the expected batch qN: 12 of 16 under C_l -> S_b = 12 - 4 = 8 -> 0.75
    assert unclipped_fraction({"a": 12 * 0.5 - 4 * 0.5}, expected_batch_size=16.0) == {"a": 0.75}
    assert quantile_update({"a": 1.0}, {"a": 1e9}, quantile=0.5, lr=1.0, limits=(1e-6, 1e6)) == {"a": 1e-6}


@pytest.mark.parametrize("start,direction", [(1e3, -1), (1e-6, +1)])
def test_thresholds_move_toward_the_quantile_step_by_step(start, direction):
    """C far above every norm: all units under C_l, bbar ~ 1, C_l shrinks; far below: bbar ~ 0, C_l grows."""
    store = RunStore()
    cfg = RunConfig(
        **FAST,
        max_steps=2,
        noise_multiplier=1.0,
        max_grad_norm=start,
        clip_allocation="quantile",
        clip_quantile_share=0.5,
        noise_seed=3,
        eval_every=100,
    )
    s = Session(cfg, store=store)
    summary = s.run()
    assert summary["status"] == "finished", summary
    steps = step_events(store, s.run_id)
    first = steps[0].module_clip_norm
    assert all(c == pytest.approx(start / math.sqrt(len(first))) for c in first.values()), "C_l(0) = C / sqrt(L)"
    for before, after in zip(steps, steps[1:]):
        for g, c in before.module_clip_norm.items():
            bbar = before.module_unclipped_fraction[g]
            assert (bbar - 0.5) * -direction > 0
            assert after.module_clip_norm[g] == pytest.approx(c * math.exp(-0.2 * (bbar - 0.5)), rel=1e-12)
            assert (after.module_clip_norm[g] - c) * direction > 0
    last = summary["noise_allocation"]
    assert all((last[g]["clip_norm"] - first[g]) * direction > 0 for g in first)


# -- the released counts -------------------------------------------------------------------------------------


def _toy_dp(noise, *, count_sigma: float = 1.0, collective=None) -> DPGradient:
    """Four blocks of one 2-vector each, C_l = 0.5, per-layer clipping with quantile counts."""
    params = {m: [("weight", torch.nn.Parameter(torch.zeros(2)))] for m in BLOCKS}
    dp = DPGradient(
        params,
        max_grad_norm=1.0,
        noise_multiplier=1.0,
        noise=noise,
        clipping="per_layer",
        counts=True,
        collective=collective,
    )
    groups = list(dp.groups)
    sigmas = solve_sigmas({g: 1.0 for g in groups}, sigma=2.0, bound=3.0)
    dp.set_allocation(
        Allocation(clip=clip_norms(groups, max_grad_norm=1.0, weights=None), sigma=sigmas, count_sigma=count_sigma)
    )
    return dp


class _NoNoise:
    def sample(self, shape, std, *, device="cpu"):
        return torch.zeros(tuple(shape), dtype=torch.float64, device=device)

    def draw_step(self, sizes, **_):  # what DPGradient.finish takes: one step's values, flat (engine/noise.py)
        return np.zeros(sum(sizes))


def _units(norms: list[list[float]]) -> dict[str, SimpleNamespace]:
    """Per-unit gradients of given norm per block: norms[unit][block]."""
    t = torch.tensor(norms, dtype=torch.float32)  # (U, L)
    return {
        m: SimpleNamespace(weight=torch.stack([t[:, l], torch.zeros_like(t[:, l])], 1)) for l, m in enumerate(BLOCKS)
    }


def test_the_counts_sum_the_centred_indicators_and_give_the_fraction_under_c():
    dp = _toy_dp(_NoNoise())
    assert isinstance(dp.clip, QuantileClipping)
    norms = [[0.1, 0.6, 0.5, float("nan")], [0.4, 0.7, 0.51, 0.2], [0.6, 0.8, 0.2, 0.3], [2.0, 0.1, 0.3, 0.4]]
    dp.start()
    dp.add_microbatch(_units(norms[:2]))
    dp.add_microbatch(_units(norms[2:]))
    st = dp.finish(expected_batch_size=4.0)
    under = [[n <= 0.5 for n in unit] for unit in norms]  # C_l = 1 / sqrt(4); NaN counts as above
    expected = [sum(u[l] for u in under) - len(norms) / 2 for l in range(4)]
    assert list(st.released_counts.values()) == expected
    fraction = unclipped_fraction(st.released_counts, expected_batch_size=4.0)
    assert list(fraction.values()) == [sum(u[l] for u in under) / 4 for l in range(4)]


def test_the_count_noise_has_std_sigma_b_from_the_gradient_noise_generator():
    z_b = 3.0
    dp = _toy_dp(RunRandomness.seeded(7).noise(), count_sigma=z_b)
    sigma_b = z_b * math.sqrt(4) / 2
    assert dp.allocation.count_noise_std() == pytest.approx(sigma_b)
    replay = RunRandomness.seeded(7).noise()
    draws = []
    for _ in range(300):  # empty steps: what is released is the noise alone
        dp.start()
        st = dp.finish(expected_batch_size=1.0)
        # one draw per step (engine/noise.py): the gradient noise first, then the counts', from the same stream
        flat = replay.draw_step([2] * len(dp.groups) + [4], ahead=False)
        expected = torch.from_numpy(flat[-4:]) * sigma_b
        assert torch.equal(torch.tensor(list(st.released_counts.values()), dtype=torch.float64), expected)
        draws.extend(st.released_counts.values())
    noise = RunRandomness.seeded(8).noise()
    x = np.concatenate([np.array(draws), noised_counts(torch.zeros(2000), sigma_b, noise).numpy()])
    assert stats.kstest(x, "norm", args=(0, sigma_b)).pvalue > 1e-4
    assert stats.kstest(x, "norm", args=(0, 2 * sigma_b)).pvalue < 1e-8
    assert stats.kstest(x, "norm", args=(0, 0.5 * sigma_b)).pvalue < 1e-8


class _FakeCollective:
    """Two ranks in one process: the all-reduce doubles (the other rank held the same units), rank 0's
    broadcast is recorded and copied onto the worker."""

    def __init__(self, is_main: bool, sent: list) -> None:
        self.is_main, self.sent = is_main, sent

    def sum_(self, tensors):
        for t in tensors:
            t.mul_(2)

    def from_main_(self, tensors, **_):
        if self.is_main:
            self.sent[:] = [t.clone() for t in tensors]
        else:
            for t, s in zip(tensors, self.sent):
                t.copy_(s)


def test_data_parallel_counts_are_summed_over_ranks_and_noised_once_on_rank_0():
    sent: list = []
    main = _toy_dp(RunRandomness.seeded(1).noise(), collective=_FakeCollective(True, sent))
    worker = _toy_dp(WorkerRandomness().noise(), collective=_FakeCollective(False, sent))  # worker: no draws
    norms = [[0.1, 0.6, 0.5, 0.2], [0.4, 0.7, 0.51, 0.9]]
    out = []
    for dp in (main, worker):
        dp.start()
        dp.add_microbatch(_units(norms))
        out.append(dp.finish(expected_batch_size=4.0).released_counts)
    assert out[0] == out[1], "every rank uses rank 0's noisy counts"
    replay = RunRandomness.seeded(1).noise()  # one draw per step: the gradient noise, then the counts'
    noise = torch.from_numpy(replay.draw_step([2] * len(main.groups) + [4])[-4:]) * main.allocation.count_noise_std()
    clean = [2 * (sum(u[l] <= 0.5 for u in norms) - 1.0) for l in range(4)]  # both ranks' units
    assert list(out[0].values()) == pytest.approx([c + float(n) for c, n in zip(clean, noise)], abs=1e-6)


def test_gradient_and_counts_together_move_by_at_most_one_over_sigma_on_neighbours():
    """One extra example: the release rescaled (block l by 1/(sigma_l C_l), counts by 1/sigma_b) moves by at
    most sqrt(sum_l sigma_l^-2 + z_b^-2) = 1/sigma, with the counts' part exactly sqrt(L)/2 / sigma_b."""
    hooks, dp = per_layer_dp(counts=True)
    model = hooks.model
    groups = list(dp.groups)
    sigma_grad, z_b = split_budget(1.0, 0.3)
    weights = {g: float(i + 1) ** 2 for i, g in enumerate(groups)}
    alloc = Allocation(
        clip=clip_norms(groups, max_grad_norm=0.02, weights=weights),
        sigma=solve_sigmas(weights, sigma=sigma_grad, bound=3.0),
        count_sigma=z_b,
    )
    dp.set_allocation(alloc)
    base, extra = make_batch("causal_lm", [7, 5, 9, 3], seed=1), make_batch("causal_lm", [8], seed=2)
    pad = {"labels": -100, "input_ids": 0, "attention_mask": 0}
    both = {k: torch.cat([base[k], torch.nn.functional.pad(extra[k], (0, 1), value=pad[k])]) for k in base}

    def release(batch):
        dp.noise = RunRandomness.seeded(0).noise()  # the same noise on both: the differences are the clean sums
        dp.start()
        hooks.enabled = True
        hooks.reset()
        loss, _ = per_example_loss(model, batch, task="causal_lm")
        loss.sum().backward()
        dp.add_microbatch(hooks.grads)
        model.zero_grad(set_to_none=True)
        st = dp.finish(expected_batch_size=1.0)
        grads = {id(p): p.grad.clone() for ps in dp.params.values() for _, p in ps}
        model.zero_grad(set_to_none=True)
        return grads, st.released_counts

    (ga, ca), (gb, cb) = release(base), release(both)
    gradient = 0.0
    for g, ms in dp.groups.items():
        diff_sq = sum(float((ga[id(p)] - gb[id(p)]).pow(2).sum()) for m in ms for _, p in dp.params[m])
        assert math.sqrt(diff_sq) <= alloc.clip[g] * (1 + 1e-4), f"block {g} exceeds its clip norm"
        gradient += diff_sq / (alloc.sigma[g] * alloc.clip[g]) ** 2
    counts_sq = sum((ca[g] - cb[g]) ** 2 for g in groups)
    assert counts_sq == pytest.approx(len(groups) / 4, rel=1e-9), "one unit moves each count by exactly 1/2"
    counts = counts_sq / alloc.count_noise_std() ** 2
    assert counts == pytest.approx(z_b**-2, rel=1e-9)
    assert alloc.effective_noise_multiplier == pytest.approx(1.0, rel=1e-12)
    assert math.sqrt(gradient + counts) <= (1 / alloc.effective_noise_multiplier) * (1 + 1e-4)
    assert gradient > 0.5 * sigma_grad**-2, "the test must be able to fail: the gradient part is not negligible"


# -- bad settings ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes,needles",
    [
        ({"clip_quantile": 0}, ["clip_quantile", "strictly between 0 and 1"]),
        ({"clip_quantile": 1}, ["clip_quantile", "strictly between 0 and 1"]),
        ({"clip_quantile": -0.1}, ["clip_quantile", "-0.1"]),
        ({"clip_quantile": 1.5}, ["clip_quantile", "1.5"]),
        ({"clip_quantile_share": 0}, ["clip_quantile_share", "nothing for the counts"]),
        ({"clip_quantile_share": 1}, ["clip_quantile_share", "nothing for the gradient"]),
        ({"clip_quantile_lr": 0}, ["clip_quantile_lr", "above 0"]),
        ({"clipping": "flat"}, ["clip_allocation=quantile", "per-layer", "clipping=per_layer"]),
        ({"noise_multiplier": 0}, ["clip_allocation=quantile", "private"]),
    ],
)
def test_bad_quantile_settings_name_the_key(changes, needles):
    with pytest.raises(ConfigError) as err:
        RunConfig.from_dict({"clip_allocation": "quantile", **changes})
    for needle in needles:
        assert needle in str(err.value)


def test_quantile_chooses_per_layer_clipping_and_the_cli_refuses_flat_with_one_message():
    assert RunConfig(clip_allocation="quantile").resolved_clipping == "per_layer"
    assert RunConfig().with_overrides(["clip_allocation=quantile"]).clip_allocation == "quantile"
    result = CliRunner().invoke(
        app, ["train", "--set", "model=tiny", "--set", "clip_allocation=quantile", "--set", "clipping=flat"]
    )
    assert result.exit_code == 2, result.output
    assert "clip_allocation=quantile" in result.output and "Traceback" not in result.output
    assert result.output.count("error:") == 1
