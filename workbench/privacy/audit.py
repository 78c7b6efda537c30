"""An empirical lower bound on epsilon from one training run (Steinke, Nasr and Jagielski 2023).

"Privacy Auditing with One (1) Training Run", arXiv 2305.08846, Theorem 5.2 (with delta), as
jax_privacy implements it (``jax_privacy/auditing.py``: ``_one_run_p_value``, ``_epsilon_one_run``,
``CanaryScoreAuditor.epsilon_one_run``). REFERENCES.md section 5.

m canaries are each included in training independently with probability 1/2. After training an
auditor scores every canary and guesses: "in" for some, "out" for some, abstaining on the rest.
With r guesses of which v are correct, an (epsilon, delta)-DP mechanism satisfies

    P[at least v correct] <= p(eps) = min(1, beta + 2 m delta alpha),
    q = e^eps / (1 + e^eps),  beta = P[Binom(r, q) >= v],
    alpha = max_{i=1..v} (1/i) P[v > Binom(r, q) >= v - i].

So every eps with p(eps) < 1 - confidence is rejected, and the largest such eps is the lower bound
(``epsilon_lower_bound``): if the mechanism were only eps-DP, a result this good would happen with
probability below 1 - confidence.

Guesses from scores (``audit_scores``): the top k scores are guessed "in" and, two-sided (the
default), also the bottom k "out". jax_privacy searches for the best k (one-sided, k- = 0) and pays
for the search with a Bonferroni correction: each k is one hypothesis test, and the significance is
divided by their number. Three corrections here:

- ``correction="grid"`` (the default, used by the engine): k is one of ten fractions of m / 2
  (``GUESS_FRACTIONS``), a set fixed before the scores are seen, so the union bound holds as stated,
  and significance / 10 stays well above the delta term 2 m delta alpha, which Bonferroni does not
  divide: with m = 1000 and delta = 1e-5 that term is up to ~1e-3, so searching every k (the next
  option, significance / 500) rejects almost nothing. All-correct guesses on 950 of 1000 canaries
  give 5.08 at 95 % (1000 of 1000 without any search would give 5.81, but the number of included
  canaries is itself random, so a fixed k = m / 2 is rarely all correct).
- ``correction="all"``: every k counts (m one-sided, m // 2 two-sided): valid, but weak with delta > 0.
- ``correction="hull"``: jax_privacy's exact procedure, one-sided only: thresholds at the distinct
  scores, kept only where they lie on the ROC curve's convex hull, and the significance divided by
  the number kept. It reproduces jax_privacy's numbers (its test: 10,000 in and 10,000 out
  normal scores shifted by 1, 2, 4 give 1.13346, 2.311945, 4.395568 at delta 1e-6). The number of
  hull points depends on the scores, so this correction is a heuristic, not a proved union bound.

Canaries that were sampled in no step. Canaries Poisson-sampled at rate q (as the real units are) take
part in at least one of T steps with probability p = 1 - (1 - q)^T; an included canary that never took
part left no trace, so no auditor can tell it from an excluded one. With ``participating=p`` the grid's
k are fractions of p m / 2, the expected number of included canaries that took part (p = 1 when q = 1).
The grid still depends on (m, q, T) alone, fixed before the scores are seen.

Power (``audit_power``, ``audit_design``): the bound an ideal auditor would reach at these settings, one
that sees without noise or interference exactly which canaries took part (and still cannot place the
included ones that never did): the expected counts of each grid k's guesses, the best k. It is what the
audit can show at best, so a bound of 0 means "no evidence" only where the power is high; where it is
low (e.g. two-sided guesses at batch 64 of 1,100 for 20 steps: p = 0.70, power 1.7) a 0 says nothing.
The ideal auditor sees no cross-talk either: gradient canaries' random directions overlap by about 1/sqrt(d), so
the other sampled canaries add about C sqrt(q m T / (2 d)) to each score, negligible for the demo's default model
(d = 30,720: 0.14 C against a signal of C) but not for the tiny test model (d = 1,792: 0.59 C; noise off reached
2.48 against a power of 4.06 there). ``audit_design`` picks two-sided or one-sided guesses by their power: a function of (m, q, T, delta),
fixed before training, so the choice costs no correction.

Ties between scores are broken by canary index, which is independent of the inclusion coins, so
the guesses stay a function of what the auditor may see (the released output and the canaries).

A lower bound above the epsilon a run claims is a bug (or a 1 - confidence accident): the
mechanism is then less private than its accountant says.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

import numpy as np
import scipy.optimize
import scipy.special
import scipy.stats

from workbench.privacy.accountants import bound_accountant, epsilon

__all__ = [
    "AuditDesign",
    "AuditResult",
    "audit_design",
    "audit_power",
    "audit_scores",
    "canary_epsilon",
    "epsilon_lower_bound",
    "p_value",
    "participation",
]

_binom = scipy.stats.binom

# correction="grid": k (guesses per side) is one of these fractions of m / 2, the expected number of
# included canaries. Ten hypotheses, fixed before the scores are seen.
GUESS_FRACTIONS = (0.95, 0.9, 0.8, 0.6, 0.4, 0.2, 0.1, 0.05, 0.02, 0.01)


@dataclass(frozen=True)
class AuditResult:
    """The outcome of a one-run audit: the lower bound and the guesses it came from."""

    epsilon_lower_bound: float
    canaries: int  # m
    guesses: int  # r (of the best k)
    correct: int  # v
    confidence: float
    kind: str  # what was audited, e.g. "gradient_canaries"
    guess_sides: str = "two_sided"  # "two_sided" (top k in, bottom k out) or "one_sided" (top k in)
    # What the audit adds (audit/canaries.py, audit/run.py): the power (audit_power) of these settings, the
    # epsilon the bound is compared against and what it is, how the canaries were scored, and whether this is an
    # interim reading (not a bound: computed before the run's planned end).
    power: float | None = None
    compared_epsilon: float | None = None
    compared_to: str | None = None
    scoring: str | None = None
    interim: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_counts(num_canaries: int, num_guesses: int, num_correct: int, delta: float, confidence: float) -> None:
    if not 0 <= num_correct <= num_guesses <= num_canaries:
        raise ValueError(
            "need 0 <= num_correct <= num_guesses <= num_canaries. "
            f"Found num_correct={num_correct}, num_guesses={num_guesses}, num_canaries={num_canaries}."
        )
    if not 0 <= delta <= 1:
        raise ValueError(f"delta must be in [0, 1]. Found {delta}.")
    if not 0.5 < confidence < 1:
        raise ValueError(f"confidence must be in (0.5, 1). Found {confidence}.")


def p_value(*, num_canaries: int, num_guesses: int, num_correct: int, epsilon: float, delta: float) -> float:
    """p(eps): the most an (eps, delta)-DP mechanism lets v of r guesses be right (Theorem 5.2).

    >>> round(p_value(num_canaries=10, num_guesses=10, num_correct=10, epsilon=0.0, delta=0.0), 6)
    0.000977
    """
    m, r, v = num_canaries, num_guesses, num_correct
    q = scipy.special.expit(epsilon)
    beta = float(_binom.sf(v - 1, r, q))  # P[Binom(r, q) >= v]
    if delta == 0 or v == 0:
        return beta
    i = np.arange(1, v + 1)
    between = _binom.sf(v - i - 1, r, q) - beta  # P[v > Binom(r, q) >= v - i]
    alpha = float(np.max(between / i))
    return min(1.0, beta + 2 * m * delta * alpha)


def _largest_rejected(m: int, r: int, v: int, delta: float, significance: float, eps_lo: float = 0.0) -> float:
    """The largest eps >= eps_lo with p(eps) < significance, or eps_lo when there is none."""
    if r == 0:
        return eps_lo
    q = scipy.special.expit(eps_lo)
    # Cheap fail-fast: p(eps) >= beta + 2 m delta P[Binom(r, q) = v - 1] (alpha's i = 1 term).
    if _binom.sf(v - 1, r, q) + 2 * m * delta * _binom.pmf(v - 1, r, q) >= significance:
        return eps_lo

    def margin(eps: float) -> float:  # > 0 while eps is rejected
        return significance - p_value(num_canaries=m, num_guesses=r, num_correct=v, epsilon=eps, delta=delta)

    if margin(eps_lo) <= 0:
        return eps_lo
    eps_hi = max(1.0, 2 * eps_lo)
    while margin(eps_hi) > 0:  # p(eps) -> 1 as eps -> inf, so this ends
        eps_lo, eps_hi = eps_hi, 2 * eps_hi
    return float(scipy.optimize.brentq(margin, eps_lo, eps_hi, xtol=1e-9, rtol=1e-12))


def epsilon_lower_bound(
    *, num_canaries: int, num_guesses: int, num_correct: int, delta: float, confidence: float = 0.95
) -> float:
    """The largest eps that r guesses with v correct reject at ``confidence`` (0 when none is).

    All correct with 1000 guesses and delta = 0 rejects every eps with q^1000 < 0.05:

    >>> round(epsilon_lower_bound(num_canaries=1000, num_guesses=1000, num_correct=1000, delta=0.0), 3)
    5.809
    """
    _check_counts(num_canaries, num_guesses, num_correct, delta, confidence)
    return _largest_rejected(num_canaries, num_guesses, num_correct, delta, 1 - confidence)


# -- guesses from scores --------------------------------------------------------------------------


def _candidates_all(scores: np.ndarray, included: np.ndarray, two_sided: bool) -> tuple[np.ndarray, np.ndarray, int]:
    """(r, v) for every k, and the number of hypotheses (fixed by m alone).

    Top k "in" (and bottom k "out"); ties are broken by canary index, which is independent of the
    inclusion coins, so the guesses stay a function of what the auditor may see.
    """
    m = len(scores)
    order = np.argsort(-scores, kind="stable")
    hits_top = np.cumsum(included[order])  # correct "in" guesses among the top k, k = 1..m
    if not two_sided:
        return np.arange(1, m + 1), hits_top, m
    half = m // 2
    k = np.arange(1, half + 1)
    hits_bottom = np.cumsum(~included[order[::-1]])[:half]  # correct "out" guesses among the bottom k
    return 2 * k, hits_top[:half] + hits_bottom, half


def grid_ks(m: int, *, two_sided: bool, participating: float = 1.0) -> np.ndarray:
    """The guesses per side of correction="grid": GUESS_FRACTIONS of p m / 2, distinct, within 1 .. m (m // 2)."""
    top = m // 2 if two_sided else m
    return np.unique(np.clip(np.round(np.array(GUESS_FRACTIONS) * participating * m / 2).astype(int), 1, top))


def _candidates_grid(
    scores: np.ndarray, included: np.ndarray, two_sided: bool, participating: float = 1.0
) -> tuple[np.ndarray, np.ndarray, int]:
    """(r, v) for k on the fixed grid (``grid_ks``), and the number of hypotheses."""
    r_all, v_all, _ = _candidates_all(scores, included, two_sided)
    ks = grid_ks(len(scores), two_sided=two_sided, participating=participating)
    return r_all[ks - 1], v_all[ks - 1], len(ks)


def _pareto_frontier(points: np.ndarray) -> np.ndarray:
    """Indices of the points on the upper convex hull of a piecewise-linear curve (jax_privacy's rule)."""
    idx = np.arange(len(points))
    while len(idx) > 2:
        d = np.diff(points[idx], axis=0)
        dominated = d[:-1, 1] * d[1:, 0] - d[1:, 1] * d[:-1, 0] <= 0
        if not dominated.any():
            break
        idx = idx[np.r_[True, ~dominated, True]]
    return idx


def _candidates_hull(scores: np.ndarray, included: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """jax_privacy's thresholds: the distinct scores (and +inf), kept where on the ROC convex hull."""
    ins, outs = np.sort(scores[included]), np.sort(scores[~included])
    thresholds = np.concatenate((np.union1d(ins, outs), [np.inf]))
    fn = np.searchsorted(ins, thresholds, side="left")  # in-canaries below the threshold
    tn = np.searchsorted(outs, thresholds, side="left")
    keep = _pareto_frontier(np.stack([fn, tn], axis=1))
    tp, fp = len(ins) - fn[keep], len(outs) - tn[keep]  # guess "in" at score >= threshold
    return tp + fp, tp, len(keep)


def audit_scores(
    scores: np.typing.ArrayLike,
    included: np.typing.ArrayLike,
    *,
    delta: float,
    confidence: float = 0.95,
    guesses: Literal["two_sided", "one_sided"] = "two_sided",
    correction: Literal["grid", "all", "hull"] = "grid",
    participating: float = 1.0,
    kind: str = "scores",
) -> AuditResult:
    """The one-run lower bound from canary scores (higher score = more likely "in").

    ``guesses``: "two_sided" guesses the top k "in" and the bottom k "out"; "one_sided" only the
    top k "in" (jax_privacy's k- = 0). ``correction``: see the module docstring. ``participating``: the
    share p of included canaries expected to take part in some step (``participation``), which scales the
    grid's k; it must come from the settings (m, q, T), never from the scores.
    """
    s = np.asarray(scores, dtype=np.float64)
    inc = np.asarray(included, dtype=bool)
    if s.ndim != 1 or inc.shape != s.shape:
        raise ValueError(f"scores and included must be 1-D of the same length. Found shapes {s.shape} and {inc.shape}.")
    if len(s) == 0:
        raise ValueError("no canaries to audit. Found 0 scores.")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores must be finite. Found NaN or inf.")
    _check_counts(len(s), 0, 0, delta, confidence)
    if guesses not in ("two_sided", "one_sided"):
        raise ValueError(f"guesses must be 'two_sided' or 'one_sided'. Found {guesses!r}.")
    if correction == "hull":
        if guesses != "one_sided":
            raise ValueError("correction='hull' is jax_privacy's one-sided procedure: use guesses='one_sided'.")
        r, v, hypotheses = _candidates_hull(s, inc)
    elif correction == "grid":
        if not 0 < participating <= 1:
            raise ValueError(f"participating must be in (0, 1]. Found {participating}.")
        r, v, hypotheses = _candidates_grid(s, inc, guesses == "two_sided", participating)
    elif correction == "all":
        r, v, hypotheses = _candidates_all(s, inc, guesses == "two_sided")
    else:
        raise ValueError(f"correction must be 'grid', 'all' or 'hull'. Found {correction!r}.")
    eps, best = _search(len(s), r, v, delta=delta, significance=(1 - confidence) / max(1, hypotheses))
    r_best, v_best = (int(r[best]), int(v[best])) if best >= 0 else (0, 0)
    return AuditResult(
        epsilon_lower_bound=eps,
        canaries=len(s),
        guesses=r_best,
        correct=v_best,
        confidence=confidence,
        kind=kind,
        guess_sides=guesses,
    )


def _search(m: int, r: np.ndarray, v: np.ndarray, *, delta: float, significance: float) -> tuple[float, int]:
    """The best bound over the candidate (r, v) and its index (-1 when none rejects eps = 0).

    As jax_privacy: candidates in order of a precision lower bound (only for speed), and a candidate
    whose raw precision v / r is at most q(best eps so far) is skipped: it cannot reject that eps,
    since v <= r q puts v at or below the median of Binom(r, q), so P[Binom(r, q) >= v] >= 1/2, above
    any significance (confidence > 1/2 is required).
    """
    total = np.maximum(r, 1)
    prec_lb = 1.0 - np.where(r - v < r, scipy.stats.beta.ppf(1 - significance, r - v + 1, total - (r - v)), 1.0)
    best_eps, best_idx, best_q = 0.0, -1, 0.5
    for i in np.argsort(-prec_lb, kind="stable"):
        ri, vi = int(r[i]), int(v[i])
        if ri == 0 or vi / ri <= best_q:
            continue
        eps = _largest_rejected(m, ri, vi, delta, significance, eps_lo=best_eps)
        if eps > best_eps:
            best_eps, best_idx, best_q = eps, int(i), float(scipy.special.expit(eps))
    return (best_eps if math.isfinite(best_eps) else 0.0), best_idx


# -- power: what the audit can show at these settings ---------------------------------------------------


def participation(*, sample_rate: float, steps: int) -> float:
    """p = 1 - (1 - q)^T: the chance that a canary Poisson-sampled at rate q takes part in at least one of T steps.

    >>> round(participation(sample_rate=64 / 1100, steps=20), 3)
    0.698
    """
    if not 0 < sample_rate <= 1 or steps < 1:
        raise ValueError(f"need 0 < sample_rate <= 1 and steps >= 1. Found sample_rate={sample_rate}, steps={steps}.")
    return float(-np.expm1(steps * np.log1p(-sample_rate))) if sample_rate < 1 else 1.0


def audit_power(
    *,
    canaries: int,
    sample_rate: float,
    steps: int,
    delta: float,
    confidence: float = 0.95,
    guesses: Literal["two_sided", "one_sided"] = "two_sided",
) -> float:
    """The bound an ideal auditor reaches with these settings (correction="grid"): the most this audit can show.

    The ideal auditor sees exactly which canaries took part in some step (no noise, no interference): of the m / 2
    included canaries (in expectation), P = p m / 2 took part, and the other (1 - p) m / 2 look like the m / 2
    excluded ones. Guessing "in" on the top k gives min(k, P) right plus, beyond P, the included share of the rest;
    two-sided, the bottom k "out" are drawn from the rest, right with probability 1 / (2 - p). Expected counts
    (rounded down) at each k of the grid, the best k, at the grid's Bonferroni correction: what the audit's own
    procedure would report on such scores. At q = 1 and m = 1000, two-sided: 5.08 (950 of 950 right).

    >>> round(audit_power(canaries=1000, sample_rate=1.0, steps=1, delta=1e-5), 2)
    5.08
    """
    m = canaries
    _check_counts(m, 0, 0, delta, confidence)
    p = participation(sample_rate=sample_rate, steps=steps)
    took_part, rest_in = p * m / 2, (1 - p) * m / 2
    rest = m / 2 + rest_in  # canaries that left no trace: all the excluded ones and the silent included ones
    two_sided = guesses == "two_sided"
    ks = grid_ks(m, two_sided=two_sided, participating=p)
    significance = (1 - confidence) / len(ks)
    best = 0.0
    for k in ks.tolist():
        right = min(k, took_part) + max(0.0, k - took_part) * rest_in / rest
        r = k
        if two_sided:
            right += k * (m / 2) / rest
            r = 2 * k
        v = min(r, int(math.floor(right + 1e-9)))
        best = max(best, _largest_rejected(m, r, v, delta, significance))
    return best


@dataclass(frozen=True)
class AuditDesign:
    """How a run's canaries are guessed, fixed from (m, q, T, delta) before training: the sides, the grid's
    participation p and the power (``audit_power``) of that choice."""

    canaries: int
    participating: float
    guesses: Literal["two_sided", "one_sided"]
    power: float
    delta: float
    confidence: float = 0.95

    def audit(self, scores: np.typing.ArrayLike, included: np.typing.ArrayLike, *, kind: str) -> AuditResult:
        """``audit_scores`` with this design, the power beside the bound."""
        res = audit_scores(
            scores,
            included,
            delta=self.delta,
            confidence=self.confidence,
            guesses=self.guesses,
            participating=self.participating,
            kind=kind,
        )
        return replace(res, power=self.power)


def audit_design(
    *, canaries: int, sample_rate: float, steps: int, delta: float, confidence: float = 0.95
) -> AuditDesign:
    """Two-sided or one-sided guesses, whichever has the more power at these settings (two-sided on a tie).

    At q = 1 two-sided guesses double the evidence. At small q many included canaries never take part, and the
    bottom scores mix them with the excluded ones, so one-sided guesses win: at batch 64 of 1,100 for 20 steps
    with m = 1000, one-sided 4.03 against two-sided 1.70. The choice reads only the settings, never the scores.
    """
    p = participation(sample_rate=sample_rate, steps=steps)
    args = dict(canaries=canaries, sample_rate=sample_rate, steps=steps, delta=delta, confidence=confidence)
    two, one = audit_power(**args, guesses="two_sided"), audit_power(**args, guesses="one_sided")
    guesses, power = ("two_sided", two) if two >= one else ("one_sided", one)
    return AuditDesign(
        canaries=canaries, participating=p, guesses=guesses, power=power, delta=delta, confidence=confidence
    )


def canary_epsilon(
    *, noise_multiplier: float, sample_rate: float, steps: int, delta: float, accountant: str = "pld"
) -> float:
    """The canaries' own epsilon: what a correct mechanism lets the one-run bound reach (with its confidence).

    A canary is one unit Poisson-sampled at the real units' rate q, of norm at most C, through the same Gaussian
    noise sigma C for ``steps`` steps, and "included or not" is add/remove of that unit. So its epsilon is DP-SGD's
    under add/remove at (sigma, q, T, delta), from an upper-bound accountant (audit/canaries.py proves that the
    white-box scores keep this guarantee). It equals the run's claim for an example-level add/remove claim and is
    below a replace-one or user-level claim. inf without noise.

    >>> round(canary_epsilon(noise_multiplier=1.5, sample_rate=0.04, steps=2250, delta=1e-5), 2)
    6.77
    """
    if steps == 0:
        return 0.0
    return epsilon(
        noise_multiplier=noise_multiplier,
        sample_rate=sample_rate,
        steps=steps,
        delta=delta,
        accountant=bound_accountant(accountant),
        neighboring="add_remove",
    )
