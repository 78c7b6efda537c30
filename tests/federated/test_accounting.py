"""Each level's epsilon (workbench/federated/accounting.py) against dp_accounting for the same events."""

import math

import pytest
from dp_accounting import NeighboringRelation, dp_event
from dp_accounting.pld import PLDAccountant
from dp_accounting.rdp import RdpAccountant

from workbench.config import RunConfig
from workbench.federated.accounting import client_mechanism, federated_privacy
from workbench.federated.options import FederatedOptions
from workbench.federated.partition import FederatedError


def pld(event, delta, relation="add_remove"):
    acc = PLDAccountant(
        NeighboringRelation.REPLACE_ONE if relation == "replace_one" else NeighboringRelation.ADD_OR_REMOVE_ONE
    )
    acc.compose(event)
    return acc.get_epsilon(delta)


def config(**kw):
    return RunConfig.from_dict({**dict(model="tiny", target_epsilon=8.0, max_grad_norm=1.0, batch_size=4), **kw})


def test_client_level_is_poisson_sampled_gaussian_composed_over_the_rounds():
    fp = federated_privacy(config(), FederatedOptions(10, 20, 3, privacy_level="client", local_steps=2))
    mech = fp.client
    assert mech.sample_rate == pytest.approx(0.3) and mech.steps == 20 and mech.privacy_unit == "client"
    event = dp_event.SelfComposedDpEvent(
        dp_event.PoissonSampledDpEvent(0.3, dp_event.GaussianDpEvent(mech.noise_multiplier)), 20
    )
    assert fp.epsilon() == pytest.approx(pld(event, mech.delta), rel=1e-3)
    assert fp.epsilon() <= 8.0 + 1e-9  # calibrated to the target, never above it
    assert fp.epsilon(10) == pytest.approx(pld(dp_event.SelfComposedDpEvent(event.event, 10), mech.delta), rel=1e-3)
    assert fp.dp_events()[0] == event


def test_client_level_with_rdp_matches_dp_accountings_rdp():
    mech = client_mechanism(
        config(accountant="rdp", noise_multiplier=1.1, target_epsilon=None),
        clients=50,
        rounds=30,
        clients_per_round=5,
    )
    acc = RdpAccountant()
    acc.compose(dp_event.PoissonSampledDpEvent(0.1, dp_event.GaussianDpEvent(1.1)), 30)
    assert mech.epsilon() == pytest.approx(acc.get_epsilon(mech.delta), rel=1e-6)


def test_record_level_is_the_largest_clients_local_epsilon():
    """Each client's DP-SGD over R x local steps at q = B / N_c; a record is in one client (parallel composition)."""
    cfg = config(noise_multiplier=0.9, target_epsilon=None)
    sizes = [(40, None), (80, None), (20, None)]
    fp = federated_privacy(cfg, FederatedOptions(3, 5, 2, privacy_level="record", local_steps=3), sizes=sizes)
    assert {p.neighboring for p in fp.plans} == {"replace_one"}  # no public size declared: the config's auto
    eps = [
        pld(
            dp_event.SelfComposedDpEvent(dp_event.PoissonSampledDpEvent(4 / n, dp_event.GaussianDpEvent(0.9)), 15),
            fp.plans[c].delta,
            "replace_one",
        )
        for c, (n, _) in enumerate(sizes)
    ]
    assert fp.client_epsilons(5) == pytest.approx(eps, rel=1e-3)
    assert fp.epsilon() == pytest.approx(max(eps), rel=1e-3)  # the smallest client (q = 4/20) is the worst
    assert fp.epsilon() == pytest.approx(eps[2], rel=1e-3)


def test_subject_level_sums_the_clients_holding_the_subject():
    """A subject whose records sit in clients 0 and 2 has epsilon_0 + epsilon_2 (and delta_0 + delta_2); the PLD
    composition of the same two events, reported beside it, is no larger."""
    cfg = config(noise_multiplier=1.0, target_epsilon=None, privacy_unit="user", user_sampling="uls", delta=1e-4)
    sizes = [(30, 10), (30, 10), (30, 10)]
    subjects = [["u1", "u2"] * 15, ["u3"] * 30, ["u1", "u4"] * 15]
    options = FederatedOptions(3, 4, 2, privacy_level="subject", local_steps=2)
    fp = federated_privacy(cfg, options, sizes=sizes, subjects=subjects)
    eps = fp.client_epsilons(4)
    for c in range(3):  # each client's user-level (ULS) event: q = B / users
        event = dp_event.SelfComposedDpEvent(dp_event.PoissonSampledDpEvent(4 / 10, dp_event.GaussianDpEvent(1.0)), 8)
        assert eps[c] == pytest.approx(pld(event, 1e-4, fp.plans[c].neighboring), rel=1e-3)
    assert fp.worst_subject() == (0, 2)
    assert fp.epsilon() == pytest.approx(eps[0] + eps[2], rel=1e-9)
    assert fp.delta == pytest.approx(2e-4)
    composed = pld(dp_event.ComposedDpEvent([fp.dp_events()[0], fp.dp_events()[2]]), 2e-4, fp.plans[0].neighboring)
    assert fp.subject_pld_epsilon() == pytest.approx(composed, rel=1e-3)
    assert composed <= fp.epsilon()
    report = fp.report()
    assert report["max_clients_per_subject"] == 2 and "sum" in report["rule"]


def test_subject_level_needs_the_user_unit():
    with pytest.raises(FederatedError, match="privacy.unit=user"):
        federated_privacy(config(), FederatedOptions(3, 2, 1, privacy_level="subject"), sizes=[(10, None)] * 3)


def test_a_delta_above_one_over_k_and_an_unknown_level_are_messages():
    with pytest.raises(FederatedError, match="1/K"):
        client_mechanism(config(delta=0.2), clients=10, rounds=2, clients_per_round=2)
    with pytest.raises(FederatedError, match="not a level"):
        federated_privacy(config(), FederatedOptions(3, 2, 1, privacy_level="everyone"))


def test_non_private_is_infinite():
    fp = federated_privacy(
        config(noise_multiplier=0, target_epsilon=None, max_grad_norm=None),
        FederatedOptions(4, 3, 2, privacy_level="client"),
    )
    assert not fp.private and math.isinf(fp.epsilon())
