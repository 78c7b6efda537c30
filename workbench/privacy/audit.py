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

Ties between scores are broken by canary index, which is independent of the inclusion coins, so
the guesses stay a function of what the auditor may see (the released output and the canaries).

A lower bound above the epsilon a run claims is a bug (or a 1 - confidence accident): the
mechanism is then less private than its accountant says.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import scipy.optimize
import scipy.special
import scipy.stats

__all__ = ["AuditResult", "audit_scores", "epsilon_lower_bound", "p_value"]

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


def _candidates_grid(scores: np.ndarray, included: np.ndarray, two_sided: bool) -> tuple[np.ndarray, np.ndarray, int]:
    """(r, v) for k on the fixed grid GUESS_FRACTIONS of m / 2, and the number of hypotheses."""
    m = len(scores)
    r_all, v_all, _ = _candidates_all(scores, included, two_sided)
    ks = np.unique(np.clip(np.round(np.array(GUESS_FRACTIONS) * m / 2).astype(int), 1, len(r_all)))
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
    kind: str = "scores",
) -> AuditResult:
    """The one-run lower bound from canary scores (higher score = more likely "in").

    ``guesses``: "two_sided" guesses the top k "in" and the bottom k "out"; "one_sided" only the
    top k "in" (jax_privacy's k- = 0). ``correction``: see the module docstring.
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
        r, v, hypotheses = _candidates_grid(s, inc, guesses == "two_sided")
    elif correction == "all":
        r, v, hypotheses = _candidates_all(s, inc, guesses == "two_sided")
    else:
        raise ValueError(f"correction must be 'grid', 'all' or 'hull'. Found {correction!r}.")
    eps, best = _search(len(s), r, v, delta=delta, significance=(1 - confidence) / max(1, hypotheses))
    r_best, v_best = (int(r[best]), int(v[best])) if best >= 0 else (0, 0)
    return AuditResult(
        epsilon_lower_bound=eps, canaries=len(s), guesses=r_best, correct=v_best, confidence=confidence, kind=kind
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
