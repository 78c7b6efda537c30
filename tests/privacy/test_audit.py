"""The one-run privacy audit (issue 17): the bound of Steinke, Nasr and Jagielski 2023 against
independent oracles, gradient canaries (white-box) and input canaries (black-box) that catch broken
privacy on the tiny model, and the exposure of the demo's planted secrets (Carlini et al. 2019)."""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import torch
from factories import TINY_RUN
from typer.testing import CliRunner

from workbench.audit.exposure import exposure, log_perplexities, random_candidates
from workbench.audit.input_canaries import canary_count
from workbench.cli import app
from workbench.config import ConfigError, RunConfig
from workbench.engine.dp_step import DPGradient
from workbench.engine.randomness import GaussianNoise, KeystreamNoise, RunRandomness
from workbench.privacy.audit import GUESS_FRACTIONS, audit_scores, epsilon_lower_bound, p_value
from workbench.session import Session
from workbench.store.runs import RunStore

# -- the bound against independent oracles -------------------------------------------------------


def _deterministic_normal(mu: float, n: int) -> np.ndarray:
    """jax_privacy's test scores (tests/auditing_test.py): the n quantiles of N(mu, 1), no random draws."""
    return scipy.stats.norm.ppf(np.linspace(0, 1, n, endpoint=False) + 1 / (2 * n)) + mu


@pytest.mark.parametrize("shift, expected", [(0, 0.0), (1, 1.13346), (2, 2.311945), (4, 4.395568)])
def test_jax_privacy_reference_values(shift, expected):
    """REFERENCES.md section 5: 10,000 in and 10,000 out normal scores, delta 1e-6, 95 %, one-sided
    guesses over every threshold with jax_privacy's Bonferroni over the ROC hull."""
    n = 10_000
    scores = np.concatenate([_deterministic_normal(shift, n), _deterministic_normal(0, n)])
    included = np.r_[np.ones(n, bool), np.zeros(n, bool)]
    res = audit_scores(scores, included, delta=1e-6, confidence=0.95, guesses="one_sided", correction="hull")
    assert res.epsilon_lower_bound == pytest.approx(expected, rel=1e-5, abs=1e-9)
    assert res.canaries == 2 * n and res.correct <= res.guesses


def _log_binom_tail(r: int, v: int, q: float) -> float:
    """log P[Binom(r, q) >= v], summed term by term with lgamma (no scipy)."""
    terms = [
        math.lgamma(r + 1) - math.lgamma(j + 1) - math.lgamma(r - j + 1) + j * math.log(q) + (r - j) * math.log1p(-q)
        for j in range(v, r + 1)
    ]
    top = max(terms)
    return top + math.log(sum(math.exp(t - top) for t in terms))


@pytest.mark.parametrize("r, v", [(10, 10), (50, 45), (100, 80), (500, 400), (1000, 1000)])
def test_delta_zero_bound_is_where_the_binomial_tail_crosses_the_significance(r, v):
    """With delta = 0 the bound is the eps where P[Binom(r, e^eps/(1+e^eps)) >= v] = 0.05: bisection on
    a tail summed by hand."""
    lo, hi = 0.0, 50.0
    for _ in range(200):
        mid = (lo + hi) / 2
        q = 1 / (1 + math.exp(-mid))
        lo, hi = (mid, hi) if _log_binom_tail(r, v, q) < math.log(0.05) else (lo, mid)
    got = epsilon_lower_bound(num_canaries=1000, num_guesses=r, num_correct=v, delta=0.0, confidence=0.95)
    assert got == pytest.approx(lo, abs=1e-6)
    assert got > 0, "every case here rejects some epsilon: the test must be able to fail"


def test_all_correct_has_a_closed_form():
    """v = r, delta = 0: q^r = 0.05, so eps = log(a / (1 - a)) with a = 0.05^(1/r); 1000 guesses give 5.81."""
    a = 0.05 ** (1 / 1000)
    assert epsilon_lower_bound(num_canaries=1000, num_guesses=1000, num_correct=1000, delta=0.0) == pytest.approx(
        math.log(a / (1 - a)), abs=1e-6
    )
    assert 5.7 < math.log(a / (1 - a)) < 5.9


@pytest.mark.parametrize(
    "m, r, v, eps, delta", [(10, 10, 9, 0.5, 1e-3), (1000, 100, 90, 1.0, 1e-5), (100, 50, 50, 2.0, 0.1)]
)
def test_p_value_with_delta_against_a_direct_sum(m, r, v, eps, delta):
    """beta + 2 m delta alpha with alpha = max_i (1/i) sum_{j=v-i}^{v-1} P[Binom = j], term by term."""
    q = 1 / (1 + math.exp(-eps))
    pmf = [math.comb(r, j) * q**j * (1 - q) ** (r - j) for j in range(r + 1)]
    beta = sum(pmf[v:])
    alpha = max(sum(pmf[v - i : v]) / i for i in range(1, v + 1))
    expected = min(1.0, beta + 2 * m * delta * alpha)
    assert p_value(num_canaries=m, num_guesses=r, num_correct=v, epsilon=eps, delta=delta) == pytest.approx(
        expected, rel=1e-9
    )


def test_the_bound_with_delta_is_where_p_crosses_the_significance():
    eps = epsilon_lower_bound(num_canaries=1000, num_guesses=400, num_correct=380, delta=1e-5)
    assert 0 < eps < epsilon_lower_bound(num_canaries=1000, num_guesses=400, num_correct=380, delta=0.0)
    assert p_value(num_canaries=1000, num_guesses=400, num_correct=380, epsilon=eps - 1e-4, delta=1e-5) < 0.05
    assert p_value(num_canaries=1000, num_guesses=400, num_correct=380, epsilon=eps + 1e-4, delta=1e-5) > 0.05


def test_scores_guess_top_and_bottom_on_a_fixed_grid_of_k():
    """Perfectly separated scores: the best k of the grid guesses 2k canaries, all correct, at 95 % / 10."""
    included = np.zeros(1000, bool)
    included[::2] = True  # 500 in
    scores = np.where(included, 10.0, 0.0) + np.linspace(0, 1e-3, 1000)
    res = audit_scores(scores, included, delta=1e-5)
    k = round(max(GUESS_FRACTIONS) * 500)
    assert (res.guesses, res.correct) == (2 * k, 2 * k)
    assert res.epsilon_lower_bound == pytest.approx(
        epsilon_lower_bound(
            num_canaries=1000,
            num_guesses=2 * k,
            num_correct=2 * k,
            delta=1e-5,
            confidence=1 - 0.05 / len(GUESS_FRACTIONS),
        )
    )
    shuffled = audit_scores(np.random.default_rng(1).permutation(scores), included, delta=1e-5)
    assert shuffled.epsilon_lower_bound < 0.5, "scores unrelated to inclusion must not reject much"


@pytest.mark.parametrize("bad", [dict(num_guesses=5, num_correct=6), dict(delta=-1.0), dict(confidence=1.0)])
def test_bad_counts_are_refused_with_the_value(bad):
    args = dict(num_canaries=10, num_guesses=5, num_correct=5, delta=0.0, confidence=0.95) | bad
    with pytest.raises(ValueError, match="Found"):
        epsilon_lower_bound(**args)


# -- the canary step ---------------------------------------------------------------------------------


class _Released:
    """A release listener (dp_step.ReleaseListener) that keeps a copy of every parameter's released noisy sum."""

    def __init__(self) -> None:
        self.sums: dict = {}

    def released(self, dp, release) -> None:
        self.sums.update({(m, j): out.clone() for m, j, out in release.sums})


def test_a_canary_is_one_clipped_unit_and_stays_out_of_the_telemetry():
    lin = torch.nn.Linear(3, 2, bias=False)
    listener = _Released()
    dp = DPGradient(
        {"m": [("weight", lin.weight)]},
        max_grad_norm=1.0,
        noise_multiplier=0.0,
        noise=GaussianNoise(np.random.default_rng(0)),
        listeners=[listener],
    )
    released = listener.sums
    dp.start()
    direction = torch.ones(1, 2, 3) / math.sqrt(6)  # one unit of norm exactly C = 1
    dp.add_canaries({"m": [direction]})
    stats = dp.finish(expected_batch_size=4.0)
    expected = direction[0].double() * (1.0 / (1.0 + 1e-6))  # clipped like any unit: factor C / (norm + 1e-6)
    torch.testing.assert_close(released[("m", 0)], expected)
    torch.testing.assert_close(lin.weight.grad, (expected / 4.0).float())  # divided by the real data's q N
    assert stats.batch_size == 0 and len(stats.norms) == 0 and stats.clipped_fraction == 0.0


# -- gradient canaries on the tiny model ---------------------------------------------------------------

# 40 training examples, batch_size 40: q = 1, so every included canary is in every step; r = 64 on every
# linear layer (d = 131,072 LoRA parameters), so the directions barely overlap (|<u_i, u_j>| ~ 1/sqrt(d))
# and, without noise, the included canaries separate from the others almost perfectly.
CANARY_RUN = dict(TINY_RUN, lora_target_modules="all-linear", lora_r=64, eval_max_examples=4)  # both audits
AUDIT = dict(CANARY_RUN, batch_size=40, physical_batch_size=20, max_steps=4, audit="gradient_canaries")


def _write(path: Path, n: int, note: str = "note {i}: please refill my prescription number {j}") -> str:
    """``n`` JSONL examples, ``note`` with i = 0 .. n-1 and j = 7 i; the path."""
    path.write_text("\n".join(json.dumps({"text": note.format(i=i, j=7 * i)}) for i in range(n)))
    return str(path)


@pytest.fixture
def notes(tmp_path) -> dict:
    """The data keys of a run: 40 training examples and a separate validation file."""
    return dict(data=_write(tmp_path / "notes.jsonl", 40), validation_data=_write(tmp_path / "val.jsonl", 4))


def _cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _train(settings: dict, *flags):
    """`workbench train` with ``--set key=value`` for each of ``settings``, then ``flags``."""
    return _cli("train", *[x for k, v in settings.items() for x in ("--set", f"{k}={v}")], *flags)


def _with_and_without_audit(settings: dict) -> tuple[Session, Session]:
    """The run of ``settings`` with audit="none" and as given, under one key: the canaries draw from their own
    stream, so both see the same Poisson batches and the same first-step loss. Both sessions, run."""
    key = RunRandomness.secret()
    plain = Session(RunConfig(**{**settings, "audit": "none"}), randomness=key)
    audited = Session(RunConfig(**settings), randomness=key)
    plain.run(), audited.run()
    a = [e for e in plain.events if e.kind == "step"]
    b = [e for e in audited.events if e.kind == "step"]
    assert [e.batch_size for e in a] == [e.batch_size for e in b]
    assert a[0].loss == b[0].loss
    return plain, audited


def test_noise_off_is_caught_far_above_a_small_epsilon(notes):
    """(a) Clipping on, noise off: the included canaries stand out, and the bound is far above any small
    epsilon. It goes to the --json summary, `workbench audit`, privacy_report.json and the model card."""
    out = _train({**AUDIT, **notes, "noise_multiplier": 0, "max_grad_norm": 1.0}, "--json")
    assert out.exit_code == 0, out.output
    summary = json.loads(out.stdout)
    audit = summary["audit"]
    assert audit["kind"] == "gradient_canaries" and audit["canaries"] == 1000 and audit["confidence"] == 0.95
    assert summary["sample_rate"] == 1.0
    assert audit["epsilon_lower_bound"] > 4.5, f"noise off must be caught: {audit}"
    assert audit["correct"] == audit["guesses"] >= 800, "without noise every guess is right"
    shown = json.loads(_cli("audit", summary["run_id"], "--json").stdout)
    assert shown["epsilon_lower_bound"] == audit["epsilon_lower_bound"] and shown["claimed_epsilon"] == "inf"
    adapter = Path(summary["adapter_dir"])
    report = json.loads((adapter / "privacy_report.json").read_text())
    assert report["audit"] == audit
    assert (
        f"empirical lower bound from a one-run audit: {audit['epsilon_lower_bound']:.3g} (claimed upper bound: inf)"
        in (adapter / "README.md").read_text()
    )
    steps = [e for _, e in RunStore().events(summary["run_id"]) if e.kind == "step"]
    assert steps[-1].audit_epsilon_lower_bound == audit["epsilon_lower_bound"]


def test_a_noise_bug_is_caught_above_the_claimed_epsilon(notes, monkeypatch):
    """A broken mechanism: the plan claims epsilon 2 but the noise comes out 100x too small. The audit
    bound exceeds the claim and `workbench audit` exits 1."""
    real = KeystreamNoise.draw_step  # what DPGradient.finish draws a step's noise from (engine/noise.py)
    monkeypatch.setattr(KeystreamNoise, "draw_step", lambda self, sizes, **kw: real(self, sizes, **kw) / 100)
    summary = Session(RunConfig(**AUDIT, **notes, target_epsilon=2.0)).run()
    assert summary["status"] == "finished", summary
    assert summary["audit"]["epsilon_lower_bound"] > summary["epsilon"] + 1, summary["audit"]
    out = _cli("audit", summary["run_id"])
    assert out.exit_code == 1 and "EXCEEDS" in out.output


def test_a_dp_run_at_epsilon_2_stays_below_its_claim(notes):
    """(b) The real mechanism at epsilon 2: the lower bound must not exceed 2. If it does, the
    implementation leaks more than its accounting says (or this is the 5 % accident: rerun once)."""
    store = RunStore()
    summary = Session(RunConfig(**{**AUDIT, "batch_size": 20}, **notes, target_epsilon=2.0), store=store).run()
    assert summary["status"] == "finished", summary
    assert summary["epsilon"] <= 2.0
    lower = summary["audit"]["epsilon_lower_bound"]
    assert 0.0 <= lower <= summary["epsilon"], (
        f"BUG: the one-run audit's lower bound {lower:.3f} exceeds the claimed epsilon {summary['epsilon']:.3f}: "
        "the implementation is less private than its accountant says"
    )
    bounds = [e.audit_epsilon_lower_bound for _, e in store.events(summary["run_id"]) if e.kind == "step"]
    assert bounds[-1] == lower and all(b is None or 0 <= b <= 2.0 for b in bounds)
    assert _cli("audit", summary["run_id"]).exit_code == 0


def test_canaries_leave_the_sampling_and_the_events_of_other_runs_alone(notes):
    """Same key, with and without audit: the same Poisson batches and first-step loss (the canaries draw from
    their own stream); without audit the new event field stays None."""
    common = dict(
        AUDIT,
        **notes,
        max_steps=3,
        batch_size=8,
        noise_multiplier=1.0,
        audit_canaries=50,
        lora_target_modules="auto",
        lora_r=8,
    )
    plain, audited = _with_and_without_audit(common)
    a = [e for e in plain.events if e.kind == "step"]
    assert all(e.audit_epsilon_lower_bound is None for e in a) and "audit" not in plain.summary
    b = [e for e in audited.events if e.kind == "step"]
    assert b[-1].audit_epsilon_lower_bound is not None and audited.summary["audit"]["canaries"] == 50


def test_an_audited_run_replays_bit_for_bit(notes):
    """The canaries come from the run's key, so `runs replay` repeats them with the batches and the noise."""
    cfg = RunConfig(
        **{
            **AUDIT,
            **notes,
            "max_steps": 2,
            "batch_size": 8,
            "noise_multiplier": 1.0,
            "audit_canaries": 50,
            "lora_target_modules": "auto",
            "lora_r": 8,
        }
    )
    summary = Session(cfg).run()
    out = _cli("runs", "replay", summary["run_id"], "--json")
    assert out.exit_code == 0, out.output
    replay = json.loads(out.stdout)
    assert replay["identical_adapter"] is True
    assert RunStore().get(replay["replay_id"]).summary["audit"] == summary["audit"]


# -- bad input ------------------------------------------------------------------------------------------


def test_audit_without_clipping_is_one_clear_message_and_stores_nothing():
    with pytest.raises(ConfigError, match="needs a clipping norm"):
        RunConfig.from_dict(
            {"model": "tiny", "audit": "gradient_canaries", "noise_multiplier": 0, "max_grad_norm": None}
        )
    with pytest.raises(ConfigError, match="flat clipping"):
        RunConfig.from_dict({"audit": "gradient_canaries", "allocation": "adaptive"})
    out = _train({"model": "tiny", "audit": "gradient_canaries", "noise_multiplier": 0, "max_grad_norm": "null"})
    assert out.exit_code == 2 and "needs a clipping norm" in out.output and "Traceback" not in out.output
    assert RunStore().list() == []


def test_audit_command_refuses_unknown_runs_and_runs_without_audit(notes):
    out = _cli("audit", "no-such-run")
    assert out.exit_code == 2 and "Traceback" not in out.output
    summary = Session(
        RunConfig(
            model="tiny",
            **notes,
            batch_size=8,
            max_steps=1,
            noise_multiplier=1.0,
            generate_max_new_tokens=0,
            eval_max_examples=4,
        )
    ).run()
    out = _cli("audit", summary["run_id"])
    assert out.exit_code == 2 and "has no audit" in out.output and "audit=gradient_canaries" in out.output


# -- input canaries (the black-box audit) and the exposure of the demo's secrets --------------------------

# 100 short training examples, batch_size 100 (q = 1: every included canary is in every step), LoRA r = 64 on
# every linear layer and lr 0.01: without noise the tiny model memorises the included canaries in ~150 steps.
MEMO = dict(
    CANARY_RUN,
    batch_size=100,
    physical_batch_size=64,
    learning_rate=0.01,
    lr_schedule="constant",
    audit="input_canaries",
)


@pytest.fixture
def short_notes(tmp_path) -> dict:
    """100 short training examples and a separate validation file."""

    note = "note {i}: refill {j}"
    return dict(
        data=_write(tmp_path / "short.jsonl", 100, note), validation_data=_write(tmp_path / "short_val.jsonl", 4, note)
    )


def test_input_canaries_run_end_to_end_and_a_dp_run_stays_below_its_claim(short_notes):
    """audit=input_canaries at epsilon 2: m = min(1000, N // 2) = 50 canaries by default, the bound in the summary,
    the step events, `workbench audit`, privacy_report.json and the model card, and at most the claim."""
    store = RunStore()
    summary = Session(RunConfig(**MEMO, **short_notes, max_steps=30, target_epsilon=2.0), store=store).run()
    assert summary["status"] == "finished", summary
    audit = summary["audit"]
    assert audit["kind"] == "input_canaries" and audit["canaries"] == 50 and "exposure" not in audit
    lower = audit["epsilon_lower_bound"]
    assert 0.0 <= lower <= summary["epsilon"] <= 2.0, (
        f"BUG: the input-canary audit's lower bound {lower:.3f} exceeds the claimed epsilon {summary['epsilon']:.3f}"
    )
    steps = [e for _, e in store.events(summary["run_id"]) if e.kind == "step"]
    assert steps[-1].audit_epsilon_lower_bound == lower
    assert all(e.audit_epsilon_lower_bound is None for e in steps[:-1]), "scored at the last step only"
    assert all(e.batch_size == 100 for e in steps), "canaries stay out of the telemetry (q = 1: every real example)"
    shown = json.loads(_cli("audit", summary["run_id"], "--json").stdout)
    assert shown["kind"] == "input_canaries" and shown["epsilon_lower_bound"] == lower and not shown["exceeds_claim"]
    adapter = Path(summary["adapter_dir"])
    assert json.loads((adapter / "privacy_report.json").read_text())["audit"] == audit
    assert "50 input canaries" in (adapter / "README.md").read_text()


def test_input_canaries_catch_a_run_without_noise(short_notes):
    """Noise off, clipping on, 150 steps at q = 1 on 100 examples: the tiny model memorises the included canaries
    (their loss falls far more than the others'), and the bound is clearly positive. 100 canaries, all guesses
    right, give at most ~2.8 at 95 % with the grid correction."""
    summary = Session(
        RunConfig(**MEMO, **short_notes, max_steps=150, noise_multiplier=0, max_grad_norm=1.0, audit_canaries=100)
    ).run()
    assert summary["status"] == "finished", summary
    audit = summary["audit"]
    assert audit["canaries"] == 100 and audit["guesses"] >= 60
    assert audit["epsilon_lower_bound"] > 2.0, f"a run without noise must be caught: {audit}"
    assert audit["correct"] >= audit["guesses"] - 1


def test_input_canaries_leave_the_sampling_alone(short_notes):
    """Same key, with and without input canaries: the same Poisson batches and first-step loss (the canaries
    draw their secrets, coins and sampling from their own stream)."""
    common = dict(MEMO, **short_notes, max_steps=3, batch_size=20, noise_multiplier=1.0, lora_r=8)
    _, audited = _with_and_without_audit(common)
    assert audited.summary["audit"]["kind"] == "input_canaries"


def test_canary_count_fits_the_data():
    assert canary_count(None, units=40) == 20 and canary_count(None, units=5000) == 1000
    assert canary_count(40, units=40) == 40
    with pytest.raises(ConfigError, match="more canaries than the data can hold.*audit_canaries=41.*at most 40"):
        canary_count(41, units=40)
    with pytest.raises(ConfigError, match="more canaries than the data can hold"):
        canary_count(None, units=3)


def test_more_input_canaries_than_the_data_can_hold_is_one_clear_message(notes):
    """40 training examples, 41 canaries asked for: exit 2 with the message, no traceback, nothing left running."""
    import threading

    sets = {"model": "tiny", **notes, "audit": "input_canaries", "audit_canaries": 41, "max_steps": 2, "batch_size": 8}
    out = _train(sets)
    assert out.exit_code == 2, out.output
    assert "more canaries than the data can hold" in out.output and "Traceback" not in out.output
    assert all(r.status == "failed" for r in RunStore().list())
    assert not [t for t in threading.enumerate() if t.name.startswith("workbench-") and t.is_alive()]


def test_exposure_formula_against_a_hand_computation():
    """TF Privacy's compute_exposure_interpolation: rank = 1 + #references at or below the secret's
    log-perplexity, exposure = log2 |R| - log2 rank."""
    refs = np.arange(2.0, 1026.0)  # 1024 references
    assert exposure(1.0, refs) == (10.0, 1)  # better than every candidate: log2 1024
    assert exposure(4.5, refs) == (8.0, 4)  # 3 candidates better: rank 4, log2 1024 - log2 4
    assert exposure(5.5, refs) == (pytest.approx(10 - math.log2(5)), 5)
    assert exposure(2.0, refs)[1] == 2, "a tie counts against the secret"
    assert exposure(2000.0, refs) == (pytest.approx(10 - math.log2(1025)), 1025)
    with pytest.raises(ValueError, match="Found"):
        exposure(1.0, [])
    cands = random_candidates("MBR-####-####", 1000, np.random.default_rng(0), exclude="MBR-1234-5678")
    assert len(set(cands)) == 1000 and "MBR-1234-5678" not in cands
    assert all(len(c) == 13 and c[:4] == "MBR-" and c[8] == "-" for c in cands)


def test_exposure_on_the_demo_is_in_the_audit_section_and_its_scores_are_exact():
    """The cached-prefix log-perplexities equal a full forward pass; a demo run with an audit reports the exposure
    of the five planted secrets (never the secrets themselves)."""
    from workbench.engine.data import encode_prompt
    from workbench.engine.data.demo import demo_secrets
    from workbench.engine.prepare import prepare

    cfg = RunConfig(
        model="tiny",
        data="demo",
        max_seq_len=128,
        max_steps=1,
        batch_size=8,
        target_epsilon=8.0,
        generate_max_new_tokens=0,
        eval_max_examples=4,
        audit="input_canaries",
        audit_canaries=20,
    )
    p = prepare(cfg)
    secret = demo_secrets()[0]
    texts = [
        secret["secret"],
        *random_candidates(secret["format"], 5, np.random.default_rng(1), exclude=secret["secret"]),
    ]
    got = log_perplexities(
        p.model,
        p.tokenizer,
        secret["prompt"],
        secret["prefix"],
        texts,
        device=p.device,
        autocast=contextlib.nullcontext,
        batch=4,
    )
    head = encode_prompt(p.tokenizer, secret["prompt"])
    seqs = [head + p.tokenizer(secret["prefix"] + t, add_special_tokens=False)["input_ids"] for t in texts]
    first = next(i for i in range(len(seqs[0])) if len({s[i] for s in seqs}) > 1)  # where the texts differ
    with torch.no_grad():
        for text_ids, value in zip(seqs, got):
            logp = torch.log_softmax(p.model(input_ids=torch.tensor([text_ids])).logits[0].float(), -1)
            bits = -sum(float(logp[i - 1, text_ids[i]]) for i in range(first, len(text_ids))) / math.log(2)
            assert value == pytest.approx(bits, rel=1e-5)

    summary = Session(cfg).run()
    assert summary["status"] == "finished", summary
    found = summary["audit"]["exposure"]
    assert [e["user_id"] for e in found] == [s["user_id"] for s in demo_secrets()]
    for e in found:
        assert e["candidates"] == 1000 and 1 <= e["rank"] <= 1001 and isinstance(e["in_training"], bool)
        assert e["exposure"] == pytest.approx(math.log2(1000) - math.log2(e["rank"]), abs=1e-4)
    assert not any(s["secret"] in json.dumps(summary) for s in demo_secrets())
