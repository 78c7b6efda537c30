"""Client layouts (workbench/federated/partition.py): neighbour-stable, and bad settings as one message each."""

import json

import pytest

from workbench.engine.data.records import Record
from workbench.federated.options import FederatedOptions
from workbench.federated.partition import FederatedError, column_values, parse_partition, partition


def records(n=240, users=40, labels=("a", "b", "c")):
    return [
        Record(messages=None, text=f"text {i}", label=labels[i % len(labels)], user_id=f"u{i % users}", line=i + 1)
        for i in range(n)
    ]


def layout(recs, spec, clients, values=None):
    p = partition(recs, clients=clients, spec=parse_partition(spec), column_values=values, allow_empty=True)
    return {name: {recs[i].text for i in ix} for name, ix in zip(p.names, p.indices)}


@pytest.mark.parametrize("spec", ["by-user", "dirichlet:0.3", "by-column:clinic"])
def test_removing_one_clients_data_changes_nothing_in_the_others(spec):
    recs = records()
    clinics = [f"clinic-{int(r.user_id[1:]) % 5}" for r in recs]
    clients = 5  # by-column: one client per clinic
    full = layout(recs, spec, clients, clinics)
    assert sum(len(v) for v in full.values()) == len(recs) and all(full.values())
    for gone in list(full)[:3]:
        keep = [i for i, r in enumerate(recs) if r.text not in full[gone]]
        # by-column: the clinic is gone, so one client fewer; the hashed layouts keep K (the client is left empty)
        rest = layout(
            [recs[i] for i in keep], spec, clients - (spec.startswith("by-column")), [clinics[i] for i in keep]
        )
        assert rest.get(gone, set()) == set()
        assert all(rest[name] == full[name] for name in full if name != gone)


@pytest.mark.parametrize("spec", ["by-user", "dirichlet:0.3"])
def test_removing_one_record_moves_no_other_record(spec):
    recs = records()
    full = layout(recs, spec, 4)
    for drop in (0, 17, 101):
        rest = layout(recs[:drop] + recs[drop + 1 :], spec, 4)
        for name in full:
            assert rest[name] == full[name] - {recs[drop].text}


def test_by_user_keeps_a_users_records_together_and_dirichlet_is_heterogeneous():
    recs = records()
    p = partition(recs, clients=4, spec=parse_partition("by-user"))
    owners = {}
    for c, ix in enumerate(p.indices):
        for i in ix:
            owners.setdefault(recs[i].user_id, set()).add(c)
    assert all(len(cs) == 1 for cs in owners.values())
    d = partition(records(3000, 300), clients=4, spec=parse_partition("dirichlet:0.1"), seed=3)
    shares = [sum(1 for i in ix if i % 3 == 0) / len(ix) for ix in d.indices]  # label "a" share per client
    assert max(shares) - min(shares) > 0.3  # alpha 0.1: far from the 1/3 each of an iid split


def test_by_column_gives_one_client_per_value_named_by_it():
    recs = records()
    values = [["north", "south", "east"][i % 3] for i in range(len(recs))]
    p = partition(recs, clients=3, spec=parse_partition("by-column:clinic"), column_values=values)
    assert p.names == ("east", "north", "south")
    assert {values[i] for i in p.indices[1]} == {"north"}


def test_more_clients_than_units_is_one_message():
    with pytest.raises(FederatedError, match="--clients 50 is more than the 40 users"):
        partition(records(), clients=50, spec=parse_partition("by-user"))
    with pytest.raises(FederatedError, match="more than the 3 distinct values of 'clinic'"):
        partition(records(), clients=4, spec=parse_partition("by-column:clinic"), column_values=["a", "b", "c"] * 80)


def test_clients_per_round_above_clients_and_bad_counts_are_messages():
    with pytest.raises(FederatedError, match="--clients-per-round 12 must be between 1 and --clients \\(10\\)"):
        FederatedOptions(clients=10, rounds=3, clients_per_round=12, local_steps=1)
    with pytest.raises(FederatedError, match="--rounds must be at least 1"):
        FederatedOptions(clients=10, rounds=0, clients_per_round=2, local_steps=1)


def test_a_missing_partition_column_is_one_message(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps({"text": f"t{i}", "site": "x"}) for i in range(5)))
    with pytest.raises(FederatedError, match="data.jsonl has no column 'clinic' \\(its columns: text, site\\)"):
        column_values(str(path), "clinic", [1, 2, 3])
    with pytest.raises(FederatedError, match="needs a data file with that column"):
        column_values("demo", "clinic", [1])
    assert column_values(str(path), "site", [1, 2]) == ["x", "x"]


def test_bad_layouts_and_missing_users_are_messages():
    with pytest.raises(FederatedError, match="not a layout"):
        parse_partition("dirichlet:-1")
    with pytest.raises(FederatedError, match="not a layout"):
        parse_partition("by-clinic")
    no_users = [Record(messages=None, text="t", label="a", user_id=None)] * 3
    with pytest.raises(FederatedError, match="without a user_id"):
        partition(no_users, clients=2, spec=parse_partition("by-user"))
