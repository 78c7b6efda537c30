"""What a federated run releases, and its epsilon at each of the three levels (torch-free).

- **client** (DP-FedAvg, McMahan et al. 2018): each round every client is Poisson-sampled at q = M/K (the server's
  secret stream), each sampled client's update is clipped to C, and the server adds N(0, sigma^2 C^2) once to the
  sum and divides by the public qK. One round is ``PoissonSampledDpEvent(q, GaussianDpEvent(sigma))``; R rounds its
  R-fold composition: exactly ``planning.Mechanism`` with q = M/K, T = R and the unit "client", so the same value
  calibrates sigma, answers epsilon(round) and gives the dp_event.
- **record** (or user, by the config's ``privacy.unit``) inside each client: each client runs the engine's DP-SGD
  (its own plan and its own secret key) for ``local_steps`` steps each round it is sampled; counted as if it were
  sampled every round (participation sampling is not used to amplify: an upper bound), its mechanism is its plan
  over R x local_steps steps. The server releases only functions of the clients' released adapters (post-processing),
  and a record sits in one client, so by parallel composition the run's record-level epsilon is the largest client's.
- **subject** (a ``user_id`` whose records sit in several clients): each client protects a person's records together
  (``privacy.unit=user``), and a subject held by the clients S is covered by composing their mechanisms. The rule
  used, stated with every number: epsilon_subject = the sum of epsilon_c over c in S, delta_subject = the sum of the
  delta_c (basic composition, which holds for adaptive composition); the PLD composition of the same events, which
  is tighter, is reported beside it for the worst subject (``subject_pld_epsilon``).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, replace
from typing import Sequence

from workbench.config import RunConfig
from workbench.federated.options import FederatedOptions
from workbench.federated.partition import FederatedError
from workbench.planning.mechanism import Mechanism
from workbench.planning.plan import PrivacyPlan, make_plan


def client_mechanism(
    config: RunConfig, *, clients: int, rounds: int, clients_per_round: int, noise_multiplier: float | None = None
) -> Mechanism:
    """The client-level mechanism: q = M/K, T = R rounds, sigma given or calibrated to the config's target (upper
    bound accountant), delta from the config or below 1/(10 K)."""
    delta = config.delta if config.delta is not None else config.default_delta(dataset_size=clients)
    if delta >= 1.0 / clients:
        raise FederatedError(
            f"delta={delta:g} is not below 1/K = {1.0 / clients:.3g} (K={clients} clients): such a delta allows "
            "leaking a whole client. Lower privacy.delta or leave it empty."
        )
    sigma = noise_multiplier if noise_multiplier is not None else config.noise_multiplier
    mech = Mechanism(
        sample_rate=clients_per_round / clients,
        steps=rounds,
        delta=delta,
        noise_multiplier=None if sigma is None else float(sigma),
        accountant=config.accountant if config.accountant in ("pld", "rdp", "prv") else "pld",
        neighboring="add_remove",
        privacy_unit="client",
    )
    return mech.calibrated(config.target_epsilon) if mech.noise_multiplier is None else mech


def local_config(config: RunConfig, *, rounds: int, local_steps: int, level: str) -> RunConfig:
    """The config a client trains each round with: non-private under client-level DP (the server's noise is the
    mechanism), else the config's DP-SGD planned over every step it may take (R x local_steps). No prefix cache:
    a client builds a trainer each round, so its cache would start cold every time."""
    config = config.with_overrides({"prefix_cache": "off"})
    if level == "client":
        # plain local training: max_grad_norm is the clip of each client's update at the server, not of examples
        return config.with_overrides(
            {"noise_multiplier": 0, "target_epsilon": None, "max_grad_norm": None, "max_steps": local_steps}
        )
    if level == "subject" and config.privacy_unit != "user":
        raise FederatedError(
            "--privacy-level subject needs each client to protect a person's records together: set privacy.unit=user "
            "(--set privacy.unit=user) so a subject is one unit inside each client, then the clients holding them "
            "are composed."
        )
    return config.with_overrides({"max_steps": rounds * local_steps})


@dataclass(frozen=True)
class FederatedPrivacy:
    """The run's privacy at its level: the mechanism(s) and what each number is for."""

    level: str
    rounds: int
    local_steps: int
    client: Mechanism | None = None  # client level
    plans: tuple[PrivacyPlan, ...] = ()  # record / subject level: each client's local plan over R x local_steps
    subject_clients: tuple[tuple[int, ...], ...] = ()  # subject level: for each subject, the clients holding them

    @property
    def private(self) -> bool:
        if self.level == "client":
            return self.client is not None and self.client.private
        return all(p.private for p in self.plans)

    @property
    def delta(self) -> float:
        if self.level == "client":
            return self.client.delta
        deltas = [p.delta for p in self.plans]
        if self.level == "subject":
            return min(1.0, max(sum(deltas[c] for c in s) for s in self.subject_clients))
        return max(deltas)

    def client_epsilons(self, round_: int) -> list[float]:
        """Each client's local epsilon after ``round_`` rounds (record / subject level)."""
        return [p.mechanism.epsilon(round_ * self.local_steps) for p in self.plans]

    def epsilon(self, round_: int | None = None) -> float:
        """The level's epsilon after ``round_`` rounds (default: all R); inf when non-private."""
        round_ = self.rounds if round_ is None else round_
        if not self.private:
            return math.inf
        if round_ <= 0:
            return 0.0
        if self.level == "client":
            return self.client.epsilon(round_)
        eps = self.client_epsilons(round_)
        if self.level == "record":
            return max(eps)  # parallel composition: a record is in one client
        return max(sum(eps[c] for c in s) for s in self.subject_clients)  # the sum over the clients holding them

    def curve(self, points: int = 12) -> list[tuple[int, float]]:
        if not self.private:
            return []
        if self.level == "client":
            return self.client.curve()
        rounds = sorted({max(1, round(self.rounds * (i + 1) / min(points, self.rounds))) for i in range(points)})
        return [(0, 0.0)] + [(r, self.epsilon(r)) for r in rounds]

    def dp_events(self, round_: int | None = None) -> list:
        """The dp_accounting events the level's epsilon is computed from: [the client mechanism's], or one per
        client (record / subject level)."""
        round_ = self.rounds if round_ is None else round_
        if self.level == "client":
            return [self.client.dp_event(round_)]
        return [p.mechanism.dp_event(round_ * self.local_steps) for p in self.plans]

    def worst_subject(self) -> tuple[int, ...]:
        """The clients of the subject with the largest summed epsilon (subject level)."""
        eps = self.client_epsilons(self.rounds)
        return max(self.subject_clients, key=lambda s: sum(eps[c] for c in s))

    def subject_pld_epsilon(self) -> float | None:
        """The worst subject's epsilon by PLD composition of its clients' events (tighter than the sum)."""
        if self.level != "subject" or not self.private:
            return None
        from dp_accounting import NeighboringRelation
        from dp_accounting.dp_event import ComposedDpEvent
        from dp_accounting.pld import PLDAccountant

        events = self.dp_events()
        worst = self.worst_subject()
        replace_one = self.plans[0].neighboring == "replace_one"  # one config: every client's relation is the same
        accountant = PLDAccountant(
            NeighboringRelation.REPLACE_ONE if replace_one else NeighboringRelation.ADD_OR_REMOVE_ONE
        )
        accountant.compose(ComposedDpEvent([events[c] for c in worst]))
        return float(accountant.get_epsilon(self.delta))

    def report(self) -> dict:
        """What the run's summary says of its privacy: the level, the rule, the numbers."""
        out = {"privacy_level": self.level, "epsilon": self.epsilon(), "delta": self.delta, "rounds": self.rounds}
        if self.level == "client":
            out.update(
                noise_multiplier=self.client.noise_multiplier,
                sample_rate=self.client.sample_rate,
                rule="client-level DP-FedAvg: Poisson-sampled clients (q = M/K), Gaussian noise once per round, "
                "composed over the rounds (PoissonSampledDpEvent(GaussianDpEvent) x R)",
            )
        else:
            eps = self.client_epsilons(self.rounds)
            out.update(
                client_epsilons=eps,
                client_noise_multipliers=[p.noise_multiplier for p in self.plans],
                rule="the largest client's epsilon (parallel composition: each unit is in one client), each client "
                "counted as sampled every round"
                if self.level == "record"
                else "for each subject, the sum of the epsilons (and deltas) of the clients holding them (basic "
                "composition); the largest such sum",
            )
            if self.level == "subject":
                out.update(
                    max_clients_per_subject=max(len(s) for s in self.subject_clients),
                    subject_pld_epsilon=self.subject_pld_epsilon(),
                )
        return out


def local_plans(config: RunConfig, options: FederatedOptions, sizes: Sequence[tuple[int, int | None]]) -> tuple:
    """Each client's local plan for ``sizes`` (its examples, users): the local config (``local_config``) on its data.
    A run's Federation makes the same plans once (``Federation.plan``) and hands them to ``federated_privacy``."""
    local = local_config(config, rounds=options.rounds, local_steps=options.local_steps, level=options.privacy_level)
    return tuple(make_plan(local, dataset_size=n, num_users=u) for n, u in sizes)


def federated_privacy(
    config: RunConfig,
    options: FederatedOptions,
    *,
    plans: Sequence[PrivacyPlan] | None = None,
    sizes: Sequence[tuple[int, int | None]] = (),
    subjects: Sequence[Sequence[str | None]] = (),
) -> FederatedPrivacy:
    """The run's privacy for ``options``. Record and subject level: the clients' local ``plans`` (the Federation's,
    made once), or made here from ``sizes`` (each client's (examples, users)); ``subjects``: each client's records'
    user ids (the subject level's clients per subject)."""
    level, rounds, local_steps = options.privacy_level, options.rounds, options.local_steps
    if level == "client":
        mech = client_mechanism(
            config, clients=options.clients, rounds=rounds, clients_per_round=options.clients_per_round
        )
        if not config.is_private:
            mech = replace(mech, noise_multiplier=0.0)
        return FederatedPrivacy(level, rounds, local_steps, client=mech)
    local_config(config, rounds=rounds, local_steps=local_steps, level=level)  # the level's checks (subject: unit)
    plans = tuple(plans) if plans is not None else local_plans(config, options, sizes)
    held: dict[str, set[int]] = defaultdict(set)
    for c, users in enumerate(subjects):
        for u in users:
            if u is not None:
                held[u].add(c)
    spans = tuple(sorted({tuple(sorted(s)) for s in held.values()})) or tuple((c,) for c in range(len(plans)))
    return FederatedPrivacy(level, rounds, local_steps, plans=plans, subject_clients=spans)
