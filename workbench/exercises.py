"""Workshop exercises, each ending in a check that says right or wrong with a hint (issue 31).

Every check computes its verdict with the workbench's own machinery, so a participant's answer is judged by the
numbers the app shows: epsilon by ``planning.Mechanism`` (the accountant of the Plan tab, the trainer and the
ledger), a clipping norm by a noisy count (the engine's quantile-clipping release, ``engine/allocation.py``), a
class's total by the ledger (``store/ledger.py``). A check returns a ``CheckResult``: text in a terminal, a
coloured box in Jupyter, and truthy only when right (``assert check_sigma(0.7)``).

1. ``check_sigma``: a noise multiplier that keeps epsilon at most 3 after 100 steps at q = 0.01.
2. ``check_more_private``: which of two settings (``PAIRS``) is more private.
3. ``check_clip_norm``: a clipping norm at which fewer than half of the examples are clipped, chosen from a
   private quantile estimate (``private_quantile``), never from the raw histogram of the norms.
4. ``check_user_epsilon``: the user-level (ELS) epsilon of an example-level run, when each person has 4 examples.
5. ``check_ledger_total``: what two runs on the same data cost together, as the ledger composes them.

Torch-free (an import-linter contract): the checks run in any notebook kernel, and the notebook brings the model.
"""

from __future__ import annotations

import functools
import html
import math
import secrets
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from randomgen import ChaCha

from workbench.engine.allocation import quantile_update, unclipped_fraction
from workbench.errors import UserError
from workbench.planning.mechanism import Mechanism

DELTA = 1e-5
CLOSE = 0.10  # a numeric answer within 10 % of the reference is right


class ExerciseError(UserError, ValueError):
    """What an exercise was given cannot be used (no norms, a norm that is not a number); the message says what."""


@dataclass(frozen=True, repr=False)
class CheckResult:
    """A check's verdict: ``ok``, what was found (``message``) and what to try or learn next (``hint``)."""

    ok: bool
    message: str
    hint: str = ""
    exercise: str = ""

    def __bool__(self) -> bool:
        return self.ok

    @property
    def verdict(self) -> str:
        return "✅ Right" if self.ok else "❌ Not yet"

    def __str__(self) -> str:
        head = f"{self.verdict}{f' ({self.exercise})' if self.exercise else ''}: {self.message}"
        return head + (f"\n   {'Note' if self.ok else 'Hint'}: {self.hint}" if self.hint else "")

    __repr__ = __str__

    def _repr_markdown_(self) -> str:
        title = f" ({self.exercise})" if self.exercise else ""
        text = f"**{self.verdict}{title}.** {self.message}"
        return text + (f"\n\n*{'Note' if self.ok else 'Hint'}:* {self.hint}" if self.hint else "")

    def _repr_html_(self) -> str:
        colour = "#1a7f37" if self.ok else "#cf222e"
        title = f" ({html.escape(self.exercise)})" if self.exercise else ""
        hint = ""
        if self.hint:
            hint = f"<br><i>{'Note' if self.ok else 'Hint'}:</i> {html.escape(self.hint)}"
        return (
            f'<div style="border-left: 4px solid {colour}; padding: 4px 10px; margin: 4px 0">'
            f"<b>{self.verdict}{title}.</b> {html.escape(self.message)}{hint}</div>"
        )


def _number(answer: Any, what: str, exercise: str) -> float | CheckResult:
    """``answer`` as a finite float, or the wrong-answer result that says what a ``what`` looks like."""
    try:
        value = float(answer)
    except (TypeError, ValueError):
        return CheckResult(False, f"{answer!r} is not a number.", f"give {what} as a number, e.g. 1.5.", exercise)
    if not math.isfinite(value):
        return CheckResult(False, f"{value} is not a finite number.", f"give {what} as a finite number.", exercise)
    return value


def _close(value: float, reference: float) -> bool:
    return abs(value - reference) <= CLOSE * abs(reference)


# -- 1. a noise multiplier for a budget -----------------------------------------------------------------------------
BUDGET_EPSILON, BUDGET_STEPS, BUDGET_RATE = 3.0, 100, 0.01
SIGMA = "1. sigma for a budget"


def budget_mechanism(noise_multiplier: float | None = None) -> Mechanism:
    """Exercise 1's mechanism: q = 0.01, 100 steps, delta 1e-5, add/remove, PLD (the app's defaults)."""
    return Mechanism(sample_rate=BUDGET_RATE, steps=BUDGET_STEPS, delta=DELTA, noise_multiplier=noise_multiplier)


@functools.lru_cache(maxsize=1)
def _smallest_sigma() -> float:
    return budget_mechanism().calibrated(BUDGET_EPSILON).noise_multiplier


def check_sigma(sigma: Any) -> CheckResult:
    """Right when ``sigma`` keeps epsilon at most 3 after 100 steps at q = 0.01 (delta 1e-5)."""
    value = _number(sigma, "the noise multiplier sigma", SIGMA)
    if isinstance(value, CheckResult):
        return value
    if value <= 0:
        return CheckResult(
            False,
            f"sigma = {value:g} adds no noise: epsilon is infinite.",
            "sigma is the noise's standard deviation in units of the clipping norm; it must be positive.",
            SIGMA,
        )
    eps = budget_mechanism(value).epsilon()
    where = f"With sigma = {value:g}, epsilon after {BUDGET_STEPS} steps at q = {BUDGET_RATE:g} is {eps:.3f}"
    if eps > BUDGET_EPSILON:
        return CheckResult(
            False,
            f"{where}, above {BUDGET_EPSILON:g}.",
            "increase sigma: more noise in each step makes each step cost less epsilon.",
            SIGMA,
        )
    smallest = _smallest_sigma()
    note = f"the smallest sigma within {BUDGET_EPSILON:g} is {smallest:.3f} (Mechanism.calibrated({BUDGET_EPSILON:g}))"
    if value > 1.25 * smallest:
        note += "; yours adds more noise than the budget needs, and the model pays for it in accuracy"
    return CheckResult(True, f"{where}, within {BUDGET_EPSILON:g}.", note + ".", SIGMA)


# -- 2. which setting is more private -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Pair:
    """Two settings to compare, and what the comparison teaches."""

    a: Mechanism
    b: Mechanism
    lesson: str

    def _repr_markdown_(self) -> str:
        rows = [
            "| setting | q | sigma | steps T | epochs (q T) |",
            "|---|---|---|---|---|",
        ]
        for name, m in (("A", self.a), ("B", self.b)):
            rows.append(
                f"| {name} | {m.sample_rate:g} | {m.noise_multiplier:g} | {m.steps} | {m.sample_rate * m.steps:g} |"
            )
        return "\n".join(rows) + f"\n\ndelta = {self.a.delta:g} for both."


def _setting(q: float, sigma: float, steps: int) -> Mechanism:
    return Mechanism(sample_rate=q, steps=steps, delta=DELTA, noise_multiplier=sigma)


PAIRS = {
    1: Pair(
        _setting(0.01, 1.0, 1000),
        _setting(0.02, 1.0, 500),
        "at a fixed sigma, epsilon grows roughly like q sqrt(T): doubling the batch costs more than halving the steps "
        "saves, although both see the data for 10 epochs",
    ),
    2: Pair(
        _setting(0.01, 1.0, 1000),
        _setting(0.01, 2.0, 4000),
        "doubling sigma more than pays for four times the steps: with more noise each step leaks much less, and "
        "amplification by sampling is stronger when one step's privacy loss is small",
    ),
}
PAIR = "2. which is more private"


def check_more_private(answer: Any, *, pair: int = 1) -> CheckResult:
    """Right when ``answer`` ('A' or 'B') names the setting of ``PAIRS[pair]`` with the smaller epsilon."""
    exercise = f"{PAIR}, pair {pair}"
    if pair not in PAIRS:
        return CheckResult(False, f"there is no pair {pair!r}.", f"choose one of {sorted(PAIRS)}.", exercise)
    choice = str(answer).strip().upper()
    if choice not in ("A", "B"):
        return CheckResult(False, f"{answer!r} is neither 'A' nor 'B'.", "answer 'A' or 'B'.", exercise)
    p = PAIRS[pair]
    eps = {"A": p.a.epsilon(), "B": p.b.epsilon()}
    best = min(eps, key=eps.get)
    found = f"A spends epsilon {eps['A']:.2f} and B {eps['B']:.2f} (delta {DELTA:g}, PLD)"
    if choice == best:
        return CheckResult(True, f"{choice} is more private: {found}.", p.lesson + ".", exercise)
    return CheckResult(False, f"{choice} is the less private one: {found}.", p.lesson + ".", exercise)


# -- 3. a clipping norm from a private quantile ---------------------------------------------------------------------
RAW_HISTOGRAM = (
    "the raw histogram of the norms is not private: each bar is an exact count of examples, so adding or removing "
    "one person's example moves a bar by one (and the largest norm may be one person's value); a clipping norm read "
    "off it depends on individuals with nothing accounting for it. private_quantile and this check add Gaussian "
    "noise to their counts and say what epsilon they spend."
)
CLIP = "3. a clipping norm"
CHECK_NOISE = 10.0  # the check's count noise multiplier: noise std 5 examples, epsilon 0.34 at 1e-5 for one check


@dataclass(frozen=True)
class QuantileEstimate:
    """A differentially private estimate of a quantile of the norms, and what it cost."""

    value: float
    quantile: float
    epsilon: float
    delta: float
    rounds: int
    noise_multiplier: float

    def __float__(self) -> float:
        return self.value

    def __str__(self) -> str:
        return (
            f"private {self.quantile:g}-quantile estimate {self.value:.4g} ({self.rounds} noisy counts, noise "
            f"multiplier {self.noise_multiplier:g}: epsilon {self.epsilon:.2f} at delta {self.delta:g})"
        )

    def _repr_markdown_(self) -> str:
        return str(self)


def _secret_normals(size: int) -> np.ndarray:
    """Standard normals from a fresh 256-bit OS key through ChaCha20, the engine's construction (randomness.py);
    never seeded, never exported. A float64 sum of four normals over 2, as the engine's secure-mode noise."""
    gen = np.random.Generator(ChaCha(key=int.from_bytes(secrets.token_bytes(32), "little"), counter=0, rounds=20))
    return gen.standard_normal((4, size)).sum(axis=0) / 2


def _noisy_unclipped(values: np.ndarray, clip_norm: float, *, noise_multiplier: float, size: float) -> float:
    """The engine's released count (dp_step.py, allocation.py): the centred indicators 1[norm <= C] - 1/2 summed,
    plus N(0, (z/2)^2) (one unit moves the sum by 1/2), read as a fraction of the public size."""
    s = float(np.sum((values <= clip_norm) - 0.5)) + noise_multiplier / 2 * float(_secret_normals(1)[0])
    return unclipped_fraction({"all": s}, expected_batch_size=size)["all"]


def _count_epsilon(noise_multiplier: float, releases: int, delta: float) -> float:
    """Epsilon of ``releases`` Gaussian counts of multiplier z on the whole data (q = 1), composed (PLD)."""
    return Mechanism(sample_rate=1.0, steps=releases, delta=delta, noise_multiplier=noise_multiplier).epsilon()


def _norms(values: Any) -> np.ndarray:
    try:
        array = np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        array = np.array([np.nan])
    if array.size == 0 or not np.all(np.isfinite(array)):
        raise ExerciseError(
            "the norms must be a non-empty sequence of finite numbers (one per example), e.g. the notebook's `norms`."
        )
    return array


def private_quantile(
    values: Any,
    *,
    quantile: float = 0.5,
    noise_multiplier: float = 40.0,
    rounds: int = 60,
    start: float = 1.0,
    lr: float = 0.3,
    size: int | None = None,
    delta: float = DELTA,
) -> QuantileEstimate:
    """A DP estimate of the ``quantile`` of ``values`` (per-example gradient norms), the way the engine's quantile
    clip norms track it (Andrew et al. 2021, ``engine/allocation.py``): ``rounds`` times, count the values at or
    below the current C with Gaussian noise (multiplier ``noise_multiplier`` on the centred indicators), then move C
    by exp(-lr (fraction - quantile)). Only the noisy counts and public constants move C; the result is the geometric
    mean of the second half of the rounds (post-processing). ``size``: the public (declared) number of values; None
    takes len(values), that is, treats the count as public. The epsilon is the composition of the ``rounds`` counts.
    """
    norms = _norms(values)
    n = float(size or norms.size)
    c, path = float(start), []
    for _ in range(rounds):
        fraction = _noisy_unclipped(norms, c, noise_multiplier=noise_multiplier, size=n)
        c = quantile_update({"all": c}, {"all": fraction}, quantile=quantile, lr=lr, limits=(1e-6, 1e6))["all"]
        path.append(c)
    value = float(np.exp(np.mean(np.log(path[rounds // 2 :]))))
    eps = _count_epsilon(noise_multiplier, rounds, delta)
    return QuantileEstimate(value, quantile, eps, delta, rounds, noise_multiplier)


def check_clip_norm(clip_norm: Any, norms: Any, *, size: int | None = None) -> CheckResult:
    """Right when a noisy count (one DP release, multiplier ``CHECK_NOISE``) says fewer than half of ``norms`` are
    clipped at ``clip_norm`` (a number or a ``private_quantile`` estimate). A value copied from the raw norms (one
    example's norm, or one of their exact percentiles) is refused: it is not private, whatever the count says."""
    value = _number(clip_norm.value if isinstance(clip_norm, QuantileEstimate) else clip_norm, "a clipping norm", CLIP)
    if isinstance(value, CheckResult):
        return value
    values = _norms(norms)
    if value <= 0:
        return CheckResult(False, f"C = {value:g} clips every example to nothing.", "C must be positive.", CLIP)
    if value in set(values.tolist()) or value in set(np.quantile(values, np.linspace(0, 1, 101)).tolist()):
        return CheckResult(
            False,
            f"C = {value:.6g} is read off the raw norms (one example's norm, or one of their exact percentiles).",
            RAW_HISTOGRAM[0].upper() + RAW_HISTOGRAM[1:] + " Use private_quantile(norms, quantile=...) instead.",
            CLIP,
        )
    n = float(size or values.size)
    clipped = 1.0 - _noisy_unclipped(values, value, noise_multiplier=CHECK_NOISE, size=n)
    spread = CHECK_NOISE / 2 / n
    cost = _count_epsilon(CHECK_NOISE, 1, DELTA)
    found = (
        f"a noisy count says {clipped:.0%} of the examples are clipped at C = {value:.4g} (noise std {spread:.0%}; "
        f"this check is itself a DP release costing epsilon {cost:.2f} at delta {DELTA:g}, and checking again composes)"
    )
    if clipped < 0.5:
        return CheckResult(True, found[0].upper() + found[1:] + ".", RAW_HISTOGRAM[0].upper() + RAW_HISTOGRAM[1:], CLIP)
    return CheckResult(
        False,
        found[0].upper() + found[1:] + ": half or more.",
        "raise C: a private estimate of a quantile above 0.5 (or the median's estimate times a margin) leaves fewer "
        "than half clipped even after the noise. " + RAW_HISTOGRAM[0].upper() + RAW_HISTOGRAM[1:],
        CLIP,
    )


# -- 4. user-level against example-level epsilon --------------------------------------------------------------------
USER = "4. user-level epsilon"
USER_RUN = Mechanism(
    sample_rate=0.02,
    steps=200,
    delta=DELTA,
    noise_multiplier=1.0,
    privacy_unit="user",
    user_sampling="els",
    max_examples_per_user=4,
)


@functools.lru_cache(maxsize=1)
def _user_reference() -> tuple[float, float, tuple[float, float]]:
    return USER_RUN.epsilon(), USER_RUN.unit_epsilon(), USER_RUN.group_bound()


def check_user_epsilon(answer: Any) -> CheckResult:
    """Right when ``answer`` is within 10 % of ``USER_RUN``'s user-level epsilon: examples sampled as in the run
    (ELS), each person with up to 4 of them, delta 1e-5 (the mixture-of-Gaussians PLD the ledger uses)."""
    value = _number(answer, "an epsilon", USER)
    if isinstance(value, CheckResult):
        return value
    user, example, (group_eps, group_delta) = _user_reference()
    k = USER_RUN.k
    found = f"the user-level epsilon of this run (k = {k}, delta {DELTA:g}) is {user:.2f}"
    if _close(value, user):
        return CheckResult(
            True,
            f"{value:g} is within 10 %: {found}; one example is protected at {example:.2f}.",
            f"group privacy's k epsilon = {group_eps:.2f} holds only at delta {group_delta:.1e}, not {DELTA:g}.",
            USER,
        )
    if _close(value, example):
        hint = (
            f"{example:.2f} is the example-level epsilon: it protects one message, and a person here has up to {k}. "
            "Ask Mechanism for privacy_unit='user', user_sampling='els', max_examples_per_user=k."
        )
    elif _close(value, group_eps):
        hint = (
            f"{group_eps:.2f} is group privacy's k epsilon, but it holds only at delta {group_delta:.1e}, far above "
            f"{DELTA:g}: at the run's delta the user-level epsilon is different. The mixture-of-Gaussians accounting "
            "(Mechanism with privacy_unit='user', user_sampling='els') answers at the run's delta."
        )
    else:
        hint = f"{'lower' if value > user else 'higher'}: a person with {k} examples is sampled up to {k} times a step."
    return CheckResult(False, f"{value:g} is not it.", hint, USER)


# -- 5. what two runs on the same data cost together ----------------------------------------------------------------
LEDGER = "5. the ledger's total"


def _group_of(run_ids: Sequence[str], store):
    from workbench.store.ledger import Ledger

    wanted = set(run_ids)
    for group in Ledger(store).datasets():
        if wanted <= {e.run_id for e in group.entries}:
            return group
    return None


def check_ledger_total(answer: Any, run_ids: Sequence[str], *, store=None) -> CheckResult:
    """Right when ``answer`` is within 10 % of the ledger's composed epsilon for the dataset group that holds all of
    ``run_ids`` (runs on the same people; ``store``: a ``RunStore``, default the workbench home's)."""
    value = _number(answer, "an epsilon", LEDGER)
    if isinstance(value, CheckResult):
        return value
    group = _group_of(run_ids, store)
    if group is None:
        return CheckResult(
            False,
            f"the ledger has no dataset group holding all of {list(run_ids)}.",
            "train the runs first (on the same data file), then pass their run ids.",
            LEDGER,
        )
    total = group.total
    if total.epsilon is None:
        return CheckResult(False, f"the ledger gives no total for this group: {total.note}", "", LEDGER)
    own = [e.epsilon for e in group.entries]
    found = (
        f"the ledger composes the {total.runs} runs on {group.dataset_name or 'this data'} to epsilon "
        f"{total.epsilon:.2f} at delta {total.delta:g} (each run alone: {', '.join(f'{e:.2f}' for e in own)})"
    )
    if _close(value, total.epsilon):
        return CheckResult(
            True,
            f"{value:g} is within 10 %: {found}.",
            "the total is more than any one run and less than their sum: PLD composes the mechanisms tightly. "
            "In a workshop every participant's run on the class's data counts in it.",
            LEDGER,
        )
    if _close(value, max(own)):
        hint = "every release on the same people spends again: the total is more than the largest run's epsilon."
    elif _close(value, sum(own)):
        hint = (
            "the sum of the epsilons is a valid bound, but loose: the ledger composes the runs' mechanisms (their "
            "DP events) with PLD, which is tighter."
        )
    else:
        hint = (
            f"{'lower' if value > total.epsilon else 'higher'}: it lies between the largest run's epsilon and the sum."
        )
    return CheckResult(False, f"{value:g} is not the ledger's total.", hint, LEDGER)
