"""A federated run's row in the privacy ledger (store/ledger.py): what it released, per dataset.

The row names the run's data by the same units as a centralised run on the same file (the federation's base
``Prepared``: every training record, every user), so ``workbench ledger`` counts it in one total with them. Its
event, by level (accounting.py states each rule):

- **client**: the DP-FedAvg event, ``PoissonSampledDpEvent(M/K, GaussianDpEvent(sigma))`` composed over the rounds.
  The ledger's neighbours are datasets differing in one record (or one person): such a change moves one client's
  clipped update to another of norm at most C, with the number of clients unchanged, so the row is that event under
  **replace_one** (a replaced client), at the client-level delta. It is an example-level row (a record is always in
  one client), or a person-level one (``user``) under ``privacy.unit=user`` when every person's records sit in one
  client (``by-user``): the unit the config asks for, so the row composes with the centralised runs of that unit.
- **record**: a record is in one client and the server only post-processes the clients' adapters (parallel
  composition), so the row's epsilon is the largest client's (accounting.py), each client's DP-SGD over
  R x local_steps steps (each client counted as sampled every round). Its event must hold for every record in
  every total with other runs, and the client worst at the row's delta need not be the worst in every composition.
  So where the clients' events differ (they calibrate sigma to their own q) the row's event is one that dominates
  every client's: Poisson sampling at the largest client q with the smallest client sigma. The privacy profile of
  the Poisson-subsampled Gaussian grows with q (the hockey-stick divergence of the mixture (1-q)P + qQ against P is
  convex in q and 0 at q = 0) and shrinks with sigma (more noise is post-processing), and a dominating pair stays
  dominating under composition (Zhu, Dong and Wang 2022), so the ledger's total holds for every record; when the
  clients' events are equal it is their event exactly.
- **subject** (and a record-level run with ``privacy.unit=user`` whose people span clients): a person held by the
  clients S is covered by the composition of their events. The row's epsilon is the stated sum rule for the worst
  subject; its event is the composition of the worst subject's clients' events where every client's event is the
  same, else, by the same dominance, the dominating event composed once for each client of the person held by the
  most clients.

A run stopped by hand counts as its planned rounds; seeded randomness or no noise: a non-private row.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import replace

from workbench.federated.accounting import FederatedPrivacy

log = logging.getLogger(__name__)


def spans(subjects) -> tuple[tuple[int, ...], ...]:
    """For each person (user id) in ``subjects`` (each client's examples' user ids), the clients holding them."""
    held: dict[str, set[int]] = defaultdict(set)
    for c, users in enumerate(subjects):
        for u in users:
            if u is not None:
                held[u].add(c)
    return tuple(sorted({tuple(sorted(s)) for s in held.values()}))


def ledger_release(privacy: FederatedPrivacy, *, rounds: int, subjects, privacy_unit: str) -> dict:
    """The row's fields for ``rounds`` rounds at the run's level (module docstring): event, epsilon, delta,
    privacy_unit, neighboring, accountant, note. ``subjects``: each client's examples' user ids;
    ``privacy_unit``: the config's (record level)."""
    from dp_accounting.dp_event import ComposedDpEvent

    held = spans(subjects)
    one_client_each = all(len(s) == 1 for s in held)
    if privacy.level == "client":
        mech = replace(privacy.client, neighboring="replace_one", accountant="pld")
        unit = "user" if privacy_unit == "user" and held and one_client_each else "example"
        return dict(
            event=mech.dp_event(rounds),
            epsilon=mech.epsilon(rounds) if mech.private else float("inf"),
            delta=mech.delta,
            privacy_unit=unit,
            neighboring="replace_one",
            accountant="pld",
            note=f"federated, client level (DP-FedAvg, {rounds} rounds): one {unit}'s change replaces one client's "
            "clipped update, so the event is counted for replace_one neighbours",
        )
    events = privacy.dp_events(rounds)
    eps = privacy.client_epsilons(rounds)
    neighboring = privacy.plans[0].neighboring
    accountant = privacy.plans[0].accountant
    by_subject = privacy.level == "subject" or (privacy_unit == "user" and not one_client_each)
    same = len({str(e) for e in events}) == 1
    dominating = None if same else _dominating_event(privacy, rounds)
    if not by_subject:
        worst = max(range(len(eps)), key=lambda c: eps[c])
        note = (
            f"federated, record level: a {privacy_unit} is in one client (parallel composition); its epsilon is the "
            f"largest client's (client {worst} of {len(eps)})"
        )
        if not same:
            note += (
                "; the clients' events differ, so the row counts one that dominates each of them in every total "
                "(the largest client sampling rate with the smallest client noise multiplier)"
            )
        return dict(
            event=events[worst] if same else dominating,
            epsilon=eps[worst],
            delta=privacy.plans[worst].delta,
            privacy_unit=privacy_unit,
            neighboring=neighboring,
            accountant=accountant,
            note=note,
        )
    subject_privacy = privacy if privacy.level == "subject" else replace(privacy, level="subject", subject_clients=held)
    subject_privacy = replace(subject_privacy, rounds=rounds)
    worst = subject_privacy.worst_subject()
    widest = max(len(c) for c in subject_privacy.subject_clients)
    return dict(
        event=ComposedDpEvent([events[c] for c in worst] if same else [dominating] * widest),
        epsilon=subject_privacy.epsilon(rounds),
        delta=subject_privacy.delta,
        privacy_unit="user",
        neighboring=neighboring,
        accountant=accountant,
        note=f"federated, subject level: a person held by {len(worst)} client(s); the row composes their events "
        "(its total is their PLD composition); its epsilon is the stated sum of their epsilons (basic composition)",
    )


def _dominating_event(privacy: FederatedPrivacy, rounds: int):
    """One client's DP-SGD event over ``rounds`` rounds that dominates every client's (module docstring): the
    largest client q with the smallest client sigma. The clients' plans come from one config, so they differ only
    in q, sigma and delta (which no event reads); where they differ in more, the composition of every client's
    event (which dominates each one)."""
    from dp_accounting.dp_event import ComposedDpEvent

    mechanisms = [p.mechanism for p in privacy.plans]
    steps = rounds * privacy.local_steps
    rest = {
        replace(m, sample_rate=0.0, noise_multiplier=1.0, steps=0, delta=0.0) for m in mechanisms
    }  # no event reads delta
    if len(rest) > 1:
        return ComposedDpEvent([m.dp_event(steps) for m in mechanisms])
    worst = replace(
        mechanisms[0],
        sample_rate=max(m.sample_rate for m in mechanisms),
        noise_multiplier=min(m.noise_multiplier for m in mechanisms),
    )
    return worst.dp_event(steps)


def record_ledger(run, status: str) -> None:
    """``run`` (run.py ``FederatedRun``)'s row when it took a round; a failure is logged, never loses the run."""
    if not run.round:
        return
    try:
        from workbench.store.ledger import Ledger

        rounds = run.options.rounds if status == "stopped" else run.round
        fields = ledger_release(
            run.privacy, rounds=rounds, subjects=run.fed.subjects(), privacy_unit=run.config.privacy_unit
        )
        seeded = run.randomness.is_seeded
        non_private = seeded or not run.privacy.private
        notes = [fields.pop("note")]
        if seeded:
            notes.append("seeded randomness (noise_seed): anyone with the seed can replay the noise, no DP guarantee")
        elif non_private:
            notes.append("non-private: no noise")
        if status == "stopped" and rounds > run.round:
            notes.append(f"stopped by hand after {run.round} of {rounds} rounds: counted as its planned rounds")
        Ledger(run.store).record_release(
            run_id=run.run_id,
            name=run.name,
            prepared=run.fed.base,
            steps=rounds,
            non_private=non_private,
            note="; ".join(notes),
            **fields,
        )
    except Exception:  # noqa: BLE001 - the ledger failing must not lose the run's end
        log.exception("the privacy ledger could not record federated run %s", run.run_id)
