"""Per-layer noise allocation and user-level DP against their oracles.

- the constraint sum sigma_l^-2 = sigma^-2 at every step, and the accountant sees sigma_eff;
- sensitivity on real neighbouring datasets: per-layer clipping bounds the rescaled change by
  1/sigma_eff; ULS bounds the change from one whole extra user by C;
- ELS caps users at k; ULS user inclusion frequency is q.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from factories import TINY_RUN
from test_dp_step import make_batch, make_model, per_layer_dp

from workbench import privacy, train
from workbench.config import ConfigError, RunConfig
from workbench.engine.allocation import (
    Allocation,
    clip_norms,
    effective_noise_multiplier,
    group_name,
    manual_weights,
    solve_sigmas,
)
from workbench.engine.dp_step import DPGradient
from workbench.engine.grad_sample import PerExampleGrads
from workbench.engine.losses import per_example_loss
from workbench.engine.randomness import RunRandomness
from workbench.session import Session
from workbench.store.runs import RunStore

FAST = TINY_RUN


def test_group_names_join_lora_a_and_b():
    assert group_name("base_model.model.model.layers.3.self_attn.q_proj.lora_A.default") == "layers.3.self_attn.q_proj"
    assert group_name("base_model.model.model.layers.3.self_attn.q_proj.lora_B.default") == "layers.3.self_attn.q_proj"
    assert group_name("base_model.model.score.modules_to_save.default") == "score"


@pytest.mark.parametrize(
    "weights", [{"a": 1, "b": 1, "c": 1}, {"a": 10, "b": 1, "c": 0.1}, {"a": 1e6, "b": 1e-6, "c": 1}]
)
def test_solve_sigmas_keeps_the_constraint_within_bounds(weights):
    sigma, bound = 1.3, 2.0
    out = solve_sigmas(weights, sigma=sigma, bound=bound)
    assert effective_noise_multiplier(out.values()) == pytest.approx(sigma, rel=1e-9)
    uniform = sigma * math.sqrt(3)
    assert all(uniform / bound * (1 - 1e-6) <= s <= uniform * bound * (1 + 1e-6) for s in out.values())
    if weights["a"] > weights["c"]:
        assert out["a"] < out["c"], "more weight, less noise"


def test_clip_norms_have_total_c_and_manual_patterns_match():
    c = clip_norms(["a", "b", "c", "d"], max_grad_norm=2.0, weights=None)
    assert math.sqrt(sum(v * v for v in c.values())) == pytest.approx(2.0)
    c = clip_norms(["a", "b"], max_grad_norm=1.0, weights={"a": 3.0, "b": 1.0})
    assert math.sqrt(sum(v * v for v in c.values())) == pytest.approx(1.0) and c["a"] > c["b"]
    w = manual_weights(["layers.0.self_attn.q_proj", "layers.0.self_attn.v_proj"], {"*v_proj": 4.0})
    assert w == {"layers.0.self_attn.q_proj": 1.0, "layers.0.self_attn.v_proj": 4.0}


def test_flat_clipping_with_uneven_noise_is_refused():
    with pytest.raises(ConfigError, match="per_layer"):
        RunConfig.from_dict({"allocation": "adaptive", "clipping": "flat"})
    assert RunConfig(allocation="adaptive").resolved_clipping == "per_layer"


@pytest.mark.parametrize("allocation", ["adaptive", "manual"])
def test_allocation_constraint_holds_at_every_step_and_accountant_sees_sigma(allocation):
    store = RunStore()
    cfg = RunConfig(
        **FAST,
        max_steps=4,
        noise_multiplier=1.2,
        allocation=allocation,
        allocation_weights={"*v_proj": 5.0} if allocation == "manual" else {},
    )
    s = Session(cfg, store=store)
    summary = s.run()
    assert summary["status"] == "finished", summary
    steps = [e for _, e in store.events(s.run_id, kinds=("step",))]
    assert len(steps) == 4
    sigmas_seen = set()
    for e in steps:
        sig = e.module_noise_multiplier
        assert effective_noise_multiplier(sig.values()) == pytest.approx(1.2, rel=1e-6)
        assert e.effective_noise_multiplier == pytest.approx(1.2, rel=1e-6)
        assert math.sqrt(sum(c * c for c in e.module_clip_norm.values())) == pytest.approx(cfg.max_grad_norm, rel=1e-6)
        for g in sig:
            assert e.module_noise_std[g] == pytest.approx(sig[g] * e.module_clip_norm[g])
        sigmas_seen.add(tuple(round(v, 6) for v in sig.values()))
        oracle = privacy.epsilon(
            noise_multiplier=1.2,
            sample_rate=summary["sample_rate"],
            steps=e.step,
            delta=summary["delta"],
            neighboring=summary["neighboring"],
        )
        assert e.epsilon == pytest.approx(oracle, rel=0.01)
    assert len(next(iter(sigmas_seen))) >= 2
    if allocation == "adaptive":
        assert len(sigmas_seen) > 1, "the adaptive allocation changes across steps"
    else:
        v = [sig for g, sig in steps[0].module_noise_multiplier.items() if g.endswith("v_proj")]
        q = [sig for g, sig in steps[0].module_noise_multiplier.items() if g.endswith("q_proj")]
        assert max(v) < min(q)
    assert summary["effective_noise_multiplier"] == pytest.approx(1.2, rel=1e-6)
    assert set(summary["noise_allocation"]) == set(steps[0].module_noise_multiplier)


def _released(model, dp, hooks, batch, *, owners=None, seed=0):
    dp.noise = RunRandomness.seeded(seed).noise()  # the same noise on both datasets: differences are the clean sums
    dp.start()
    hooks.enabled = True
    hooks.reset()
    loss, _ = per_example_loss(model, batch, task="causal_lm")
    loss.sum().backward()
    dp.add_microbatch(hooks.grads, owners)
    model.zero_grad(set_to_none=True)
    dp.finish(expected_batch_size=1.0)
    out = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    return out


def _neighbours(extra_lengths):
    base = make_batch("causal_lm", [7, 5, 9, 3], seed=1)
    extra = make_batch("causal_lm", extra_lengths, seed=2)
    t = max(base["input_ids"].shape[1], extra["input_ids"].shape[1])

    def pad(x, fill):
        return torch.nn.functional.pad(x, (0, t - x.shape[1]), value=fill)

    both = {
        k: torch.cat([pad(base[k], -100 if k == "labels" else 0), pad(extra[k], -100 if k == "labels" else 0)])
        for k in base
    }
    return base, both


def test_per_layer_clipping_bounds_the_rescaled_sensitivity():
    """Blocks rescaled by 1/(sigma_l C_l): one extra example moves the release by <= 1/sigma_eff."""
    hooks, dp = per_layer_dp()
    model = hooks.model
    groups = list(dp.groups)
    weights = {g: float(i + 1) ** 2 for i, g in enumerate(groups)}
    alloc = Allocation(
        clip=clip_norms(groups, max_grad_norm=0.02, weights=weights), sigma=solve_sigmas(weights, sigma=1.0, bound=3.0)
    )
    dp.set_allocation(alloc)
    base, both = _neighbours([8])
    a = _released(model, dp, hooks, base)
    b = _released(model, dp, hooks, both)
    names = {id(p): n for n, p in model.named_parameters()}
    scaled = 0.0
    for g, ms in dp.groups.items():
        diff_sq = sum(float((a[names[id(p)]] - b[names[id(p)]]).pow(2).sum()) for m in ms for _, p in dp.params[m])
        assert math.sqrt(diff_sq) <= alloc.clip[g] * (1 + 1e-4), f"block {g} exceeds its clip norm"
        scaled += diff_sq / (alloc.sigma[g] * alloc.clip[g]) ** 2
    assert math.sqrt(scaled) <= (1 / alloc.effective_noise_multiplier) * (1 + 1e-4)
    assert math.sqrt(scaled) > 0.3 / alloc.effective_noise_multiplier, "the test must be able to fail"


def test_uls_bounds_the_change_from_one_whole_user_by_c():
    model = make_model("causal_lm")
    hooks = PerExampleGrads(model)
    C = 0.03
    dp = DPGradient(
        hooks.trainable_parameters(), max_grad_norm=C, noise_multiplier=1.0, noise=RunRandomness.seeded(0).noise()
    )
    base, both = _neighbours([8, 6, 9])  # the extra user has three examples
    a = _released(model, dp, hooks, base, owners=np.array([0, 0, 1, 2]))
    b = _released(model, dp, hooks, both, owners=np.array([0, 0, 1, 2, 3, 3, 3]))
    diff = math.sqrt(sum(float((a[k] - b[k]).pow(2).sum()) for k in a))
    assert 0.5 * C < diff <= C * (1 + 1e-4)


def test_uls_user_mean_spans_micro_batches():
    """A user's examples split over two micro-batches give the same clipped mean as one pass."""
    model = make_model("causal_lm")
    hooks = PerExampleGrads(model)
    dp = DPGradient(
        hooks.trainable_parameters(), max_grad_norm=0.05, noise_multiplier=0.0, noise=RunRandomness.seeded(0).noise()
    )
    batch = make_batch("causal_lm", [7, 5, 9, 3], seed=3)
    owners = np.array([0, 1, 1, 1])
    one = _released(model, dp, hooks, batch, owners=owners)
    dp.start()
    hooks.enabled = True
    for rows in ([0, 1], [2, 3]):
        hooks.reset()
        mb = {k: v[rows] for k, v in batch.items()}
        loss, _ = per_example_loss(model, mb, task="causal_lm")
        loss.sum().backward()
        dp.add_microbatch(hooks.grads, owners[rows])
        model.zero_grad(set_to_none=True)
    st = dp.finish(expected_batch_size=1.0)
    assert st.batch_size == 2  # two users
    for n, p in model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p.grad, one[n], atol=1e-6, rtol=1e-5)


def test_els_caps_users_and_reports_user_level_epsilon():
    summary = train(
        **FAST, max_steps=2, noise_multiplier=1.0, privacy_unit="user", max_examples_per_user=3, public_dataset_size=600
    )
    assert summary["status"] == "finished", summary
    expected = privacy.user_epsilon_els(
        noise_multiplier=1.0,
        sample_rate=summary["sample_rate"],
        steps=2,
        delta=summary["delta"],
        max_examples_per_user=3,
    )
    assert summary["epsilon"] == pytest.approx(expected, rel=1e-6)
    assert summary["example_level_epsilon"] < summary["epsilon"]
    assert summary["num_users"] is None  # under add/remove the count of users is private: not published
    assert summary["delta"] <= 0.1 / 600  # delta from the declared public size
    assert summary["dataset_size"] == 600  # the declared size is what is published
    from workbench.engine.prepare import dataset_sizes

    capped, users = dataset_sizes(RunConfig(**FAST, privacy_unit="user", max_examples_per_user=3))
    assert capped <= 3 * users  # the cap holds on the data itself


def test_uls_samples_users_at_rate_q():
    from workbench.engine.trainer import Trainer, prepare

    cfg = RunConfig(
        **FAST, max_steps=1, noise_multiplier=1.0, privacy_unit="user", user_sampling="uls", max_examples_per_user=2
    )
    prepared = prepare(cfg)
    trainer = Trainer(
        prepared,
        run_id="t",
        emit=lambda e: None,
        run_dir=__import__("pathlib").Path("/tmp"),
        randomness=RunRandomness.secret(),
    )
    users = len(trainer.users)
    assert all(len(ix) <= 2 for ix in trainer.users)
    counts = np.zeros(users)
    draws = 3000
    for _ in range(draws):
        idx, owners = trainer._sample()
        counts[np.unique(owners)] += 1
        assert len(idx) == len(owners)
    q = prepared.plan.sample_rate
    assert q == pytest.approx(16 / users)
    assert abs(counts.mean() / draws - q) < 0.003


def test_privacy_unit_user_needs_user_ids(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join('{"prompt": "q%d", "response": "a"}' % i for i in range(40)))
    summary = train(**FAST, data=str(path), max_steps=1, noise_multiplier=1.0, privacy_unit="user")
    assert summary["status"] == "failed" and "user_id" in summary["reason"]


def test_els_epsilon_is_dp_accountings_mixture_pld_and_a_run_tracks_it_cheaply():
    import time

    from dp_accounting.pld import pld_privacy_accountant

    from workbench.planning.plan import PrivacyPlan
    from workbench.privacy.user_level import _mixture_event, mixture_grid

    sigma, q, steps, delta, k = 1.0, 0.01, 1000, 1e-6, 2
    grid = mixture_grid(noise_multiplier=sigma, sample_rate=q, steps=steps, delta=delta)
    oracle = pld_privacy_accountant.PLDAccountant(value_discretization_interval=grid)
    expected = oracle.compose(_mixture_event(sigma, q, steps, k)).get_epsilon(delta)
    got = privacy.user_epsilon_els(
        noise_multiplier=sigma, sample_rate=q, steps=steps, delta=delta, max_examples_per_user=k
    )
    assert got == pytest.approx(expected, rel=1e-9)
    assert got == pytest.approx(4.55, rel=0.01)  # REFERENCES.md
    plan = PrivacyPlan.of(
        dataset_size=10_000,
        sample_rate=q,
        steps=steps,
        delta=delta,
        noise_multiplier=sigma,
        accountant="pld",
        target_epsilon=None,
        max_grad_norm=1.0,
        privacy_unit="user",
        user_sampling="els",
        max_examples_per_user=k,
        num_users=5_000,
    )
    start = time.perf_counter()
    per_step = [plan.epsilon_at(t) for t in range(1, 41)]
    assert time.perf_counter() - start < 20, "per-step ELS accounting must not rebuild the mixture PLD"
    assert plan.epsilon_at(steps) == pytest.approx(got, rel=1e-9)  # the last step: exactly the plan's value
    assert all(a <= b for a, b in zip(per_step, per_step[1:]))
    for t in (1, 10, 40):  # earlier steps on the run's (coarser) grid: an upper bound, within 2%
        fine = privacy.user_epsilon_els(
            noise_multiplier=sigma, sample_rate=q, steps=t, delta=delta, max_examples_per_user=k
        )
        assert fine <= plan.epsilon_at(t) <= fine * 1.02 + 1e-3
