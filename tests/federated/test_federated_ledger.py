"""A federated run's privacy-ledger row (workbench/federated/ledger.py): each level's event against dp_accounting,
and one end-to-end run counted in one total with a centralised run on the same data file."""

import math

import pytest
from dp_accounting import NeighboringRelation, dp_event
from dp_accounting.pld import PLDAccountant

from workbench.config import RunConfig
from workbench.federated.accounting import federated_privacy
from workbench.federated.ledger import ledger_release, spans
from workbench.federated.options import FederatedOptions


def pld(events, delta, relation="add_remove"):
    acc = PLDAccountant(
        NeighboringRelation.REPLACE_ONE if relation == "replace_one" else NeighboringRelation.ADD_OR_REMOVE_ONE
    )
    acc.compose(dp_event.ComposedDpEvent(list(events)))
    return acc.get_epsilon(delta)


def config(**kw):
    return RunConfig.from_dict({**dict(model="tiny", target_epsilon=8.0, max_grad_norm=1.0, batch_size=4), **kw})


def test_client_level_row_is_dp_fedavg_for_a_replaced_client():
    fp = federated_privacy(config(), FederatedOptions(10, 20, 3, privacy_level="client"))
    subjects = [[f"u{c}-{i}" for i in range(5)] for c in range(10)]  # every person in one client
    row = ledger_release(fp, rounds=20, subjects=subjects, privacy_unit="user")
    sigma = fp.client.noise_multiplier
    expected = dp_event.SelfComposedDpEvent(dp_event.PoissonSampledDpEvent(0.3, dp_event.GaussianDpEvent(sigma)), 20)
    assert row["event"] == expected and row["neighboring"] == "replace_one" and row["privacy_unit"] == "user"
    assert row["delta"] == fp.delta
    replaced = pld([expected], fp.delta, "replace_one")
    assert row["epsilon"] == pytest.approx(replaced, rel=1e-2)
    assert row["epsilon"] > fp.epsilon()  # a replaced client costs more than an added one
    # example-level config: an example-level row; a person in two clients: only a record is in one client
    assert ledger_release(fp, rounds=20, subjects=subjects, privacy_unit="example")["privacy_unit"] == "example"
    subjects[1].append("u0-0")
    assert ledger_release(fp, rounds=20, subjects=subjects, privacy_unit="user")["privacy_unit"] == "example"
    # stopped after 5 rounds is the caller's business: the row is for the rounds it is given
    assert ledger_release(fp, rounds=5, subjects=subjects, privacy_unit="example")["event"].count == 5


def test_record_level_row_is_the_largest_clients_event():
    sizes = [(40, None), (200, None), (90, None)]  # the smallest client has the largest q
    fp = federated_privacy(
        config(noise_multiplier=1.0, target_epsilon=None),
        FederatedOptions(3, 6, 2, privacy_level="record", local_steps=2),
        sizes=sizes,
    )
    row = ledger_release(fp, rounds=6, subjects=[[None] * n for n, _ in sizes], privacy_unit="example")
    events = fp.dp_events(6)
    eps = [pld([e], fp.plans[c].delta, fp.plans[c].neighboring) for c, e in enumerate(events)]
    worst = max(range(3), key=lambda c: eps[c])
    # one sigma for all: the smallest client (largest q) dominates the others, and the row counts its event
    assert worst == 0 and row["event"] == events[0] and row["event"].count == 12  # R x local steps
    assert row["epsilon"] == pytest.approx(eps[0], rel=1e-2) == pytest.approx(fp.epsilon(), rel=1e-2)
    assert "differ" in row["note"]


def test_record_level_row_dominates_every_client_in_any_total():
    """Calibrated to one target, the small client has the largest q and the largest sigma, the big one the
    smallest of both: neither dominates the other, so the row counts q_max with sigma_min, which does, composed
    with another run's event, at every delta."""
    sizes = [(40, None), (400, None)]
    fp = federated_privacy(
        config(noise_multiplier=None, target_epsilon=3.0),
        FederatedOptions(2, 5, 1, privacy_level="record", local_steps=2),
        sizes=sizes,
    )
    rates = [p.mechanism.sample_rate for p in fp.plans]
    sigmas = [p.noise_multiplier for p in fp.plans]
    assert rates[0] > rates[1] and sigmas[0] > sigmas[1]
    row = ledger_release(fp, rounds=5, subjects=[[None] * n for n, _ in sizes], privacy_unit="example")
    event = row["event"]
    assert event.count == 10 and event.event.sampling_probability == pytest.approx(max(rates))
    assert event.event.event.noise_multiplier == pytest.approx(min(sigmas))
    assert row["epsilon"] == pytest.approx(fp.epsilon(), rel=1e-2)  # the run's own: the largest client's
    other = dp_event.SelfComposedDpEvent(dp_event.PoissonSampledDpEvent(0.3, dp_event.GaussianDpEvent(1.1)), 40)
    for delta in (1e-3, 1e-5, 1e-8):
        total = pld([event, other], delta, row["neighboring"])
        for c in range(2):
            assert total >= pld([fp.dp_events(5)[c], other], delta, row["neighboring"]) - 1e-9


def test_subject_level_row_composes_the_worst_subjects_clients():
    sizes = [(60, 20), (60, 20), (60, 20)]
    subjects = [[f"a{i}" for i in range(20)] * 3 for _ in range(3)]
    subjects[0][0] = subjects[1][0] = subjects[2][0] = "everywhere"  # one person in all three clients
    cfg = config(noise_multiplier=1.0, target_epsilon=None, privacy_unit="user", user_sampling="uls", delta=1e-4)
    fp = federated_privacy(cfg, FederatedOptions(3, 4, 2, privacy_level="subject"), sizes=sizes, subjects=subjects)
    row = ledger_release(fp, rounds=4, subjects=subjects, privacy_unit="user")
    assert (0, 1, 2) in spans(subjects) and (1,) not in spans(subjects)
    assert row["privacy_unit"] == "user" and row["epsilon"] == pytest.approx(fp.epsilon())
    assert row["event"] == dp_event.ComposedDpEvent(fp.dp_events(4))  # the person's three clients
    assert row["epsilon"] == pytest.approx(sum(fp.client_epsilons(4)))  # the stated sum rule
    composed = pld(fp.dp_events(4), row["delta"], row["neighboring"])
    assert composed <= row["epsilon"] + 1e-9  # PLD composition is tighter than the sum


@pytest.mark.slow
def test_a_federated_run_counts_in_one_total_with_a_centralised_run_on_the_same_data():
    pytest.importorskip("ray")
    from workbench.federated import federate
    from workbench.session import Session
    from workbench.store.ledger import Ledger
    from workbench.store.runs import RunStore

    store = RunStore()
    tiny = dict(model="tiny", batch_size=4, physical_batch_size=8, generate_max_new_tokens=0, eval_max_examples=8)
    central = Session(RunConfig(**tiny, max_steps=2, noise_multiplier=1.0), store=store, name="central").run()
    fed = federate(
        RunConfig.from_dict({**tiny, "target_epsilon": 8.0, "max_grad_norm": 1.0}),
        FederatedOptions(clients=3, rounds=2, clients_per_round=2),
        store=store,
        name="fed",
    )
    assert fed["status"] == "finished", fed["reason"]
    ledger = Ledger(store)
    row = ledger.get(fed["run_id"])
    assert row.neighboring == "replace_one" and row.steps == 2 and not row.non_private
    assert row.privacy_unit == "example"  # the config's unit: composes with the example-level centralised run
    (group,) = ledger.datasets()
    assert {e.run_id for e in group.entries} == {central["run_id"], fed["run_id"]}
    c = ledger.get(central["run_id"])
    delta = max(row.delta, c.delta)
    assert group.total.delta == delta and group.total.neighboring == "replace_one"
    expected = pld([row.event, c.event], delta, "replace_one")
    assert group.total.epsilon == pytest.approx(expected, rel=2e-2)
    assert math.isfinite(group.total.epsilon) and group.total.epsilon > row.epsilon
