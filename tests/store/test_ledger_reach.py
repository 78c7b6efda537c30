"""The ledger's reach (issue 26 items 4 and 5): runs count together by the people they trained on, and a replay
is refused on changed data and counted as a copy of its original.

Totals are checked against dp_accounting's PLD accountant composing events the test builds itself: an
example-level run counts for a person with m of its examples as the mixture of Gaussians over Binomial(m, q)
of them (scipy's pmf, m counted from the data by the test).
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import stat
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest
from dp_accounting import dp_event
from dp_accounting.pld import pld_privacy_accountant
from factories import TINY_RUN
from scipy import stats
from typer.testing import CliRunner

from workbench.cli import app as cli_app
from workbench.config import RunConfig
from workbench.engine.data import load_dataset
from workbench.engine.fingerprint import dataset_fingerprint, unit_identities
from workbench.engine.randomness import RunRandomness
from workbench.planning.plan import PrivacyPlan
from workbench.privacy import dp_events
from workbench.session import Session
from workbench.store.export import ExportError, export_run
from workbench.store.ledger import Ledger
from workbench.store.ledger_units import KEY_FILE, LEGACY_NOTE
from workbench.store.runs import RunStore

SIGMA, Q, STEPS, DELTA = 2.0, 0.05, 10, 1e-5


def rows(n_users: int = 14) -> list[dict]:
    """user u holds 1 + u % 3 examples: at most 3 per person."""
    return [
        {"text": f"note {u}-{j}: the patient {u} asked about item {j}", "user_id": f"user-{u}"}
        for u in range(n_users)
        for j in range(1 + u % 3)
    ]


def write(path: Path, records: list[dict]) -> str:
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return str(path)


def copies(tmp_path: Path) -> dict[str, str]:
    """The original, a shuffled copy and a copy with one record edited."""
    original = rows()
    shuffled = original[:]
    random.Random(3).shuffle(shuffled)
    edited = [dict(r) for r in original]
    edited[4] = {**edited[4], "text": edited[4]["text"] + " (corrected)"}
    return {
        "original": write(tmp_path / "original.jsonl", original),
        "shuffled": write(tmp_path / "shuffled.jsonl", shuffled),
        "edited": write(tmp_path / "edited.jsonl", edited),
    }


def plan(unit: str = "example", **settings) -> PrivacyPlan:
    fixed = dict(
        dataset_size=27,
        sample_rate=Q,
        steps=STEPS,
        delta=DELTA,
        noise_multiplier=SIGMA,
        accountant="pld",
        target_epsilon=None,
        max_grad_norm=1.0,
        neighboring="add_remove",
        privacy_unit=unit,
    )
    if unit == "user":
        fixed.update(user_sampling="uls", max_examples_per_user=2, num_users=14)  # users sampled at q
    return PrivacyPlan.of(**{**fixed, **settings})


def prepared(path: str, p: PrivacyPlan) -> SimpleNamespace:
    """What ``engine.prepare`` gives the ledger for ``path`` (without a model)."""
    ds = load_dataset(path)
    return SimpleNamespace(
        plan=p,
        config=SimpleNamespace(data=path),
        dataset_fingerprint=dataset_fingerprint(ds, privacy_unit=p.privacy_unit),
        dataset_name=Path(path).name,
        dataset_units=unit_identities(ds),
    )


def person_event(event, m: int):
    """The test's own per-person event of a Poisson-sampled Gaussian run: the mixture over Binomial(m, q)."""
    step = event.event
    sigma, q = step.event.noise_multiplier, step.sampling_probability
    mixture = dp_event.MixtureOfGaussiansDpEvent(
        sigma, list(range(m + 1)), [float(x) for x in stats.binom.pmf(range(m + 1), m, q)]
    )
    return dp_event.SelfComposedDpEvent(mixture, event.count)


def oracle(events, *, delta: float = DELTA) -> float:
    accountant = pld_privacy_accountant.PLDAccountant(value_discretization_interval=1e-3)
    accountant.compose(dp_event.ComposedDpEvent(list(events)))
    return accountant.get_epsilon(delta)


def most_per_person(path: str) -> int:
    return max(Counter(r.user_id for r in load_dataset(path).records).values())


# -- item 4: every run on any of the same units counts toward that unit's total --------------------------


def test_a_shuffled_copy_an_edited_copy_and_a_user_level_run_land_in_one_total(tmp_path):
    paths = copies(tmp_path)
    ledger = Ledger(RunStore(tmp_path / "home"))
    entries = {
        name: ledger.record_run(run_id=name, name=name, prepared=prepared(path, plan()), steps=STEPS, seeded=False)
        for name, path in paths.items()
    }
    assert entries["shuffled"].fingerprint == entries["original"].fingerprint  # the same set of units
    assert entries["edited"].fingerprint != entries["original"].fingerprint
    (examples,) = ledger.datasets()  # one record edited: the same group all the same
    assert {e.run_id for e in examples.entries} == set(paths) and examples.privacy_unit == "example"
    assert examples.total.epsilon == pytest.approx(oracle([e.event for e in entries.values()]), rel=0.01)
    assert examples.overlap == (
        "original.jsonl (27 examples, 14 users) and edited.jsonl (27, 14) share 26 examples and 14 users",
    )

    user = ledger.record_run(
        run_id="user", name="user", prepared=prepared(paths["original"], plan("user")), steps=STEPS, seeded=False
    )
    (group,) = ledger.datasets()
    assert {e.run_id for e in group.entries} == {*paths, "user"} and group.privacy_unit == "user"
    m = most_per_person(paths["original"])
    assert m == 3 and group.persons == {name: m for name in paths}
    expected = oracle([user.event, dp_event.SelfComposedDpEvent(person_event(entries["original"].event, m), 3)])
    assert group.total.epsilon == pytest.approx(expected, rel=0.01)
    assert group.total.epsilon > oracle([e.event for e in entries.values()]) + user.epsilon * 0.5  # not example-level
    assert "group privacy" in group.rule and "k = m" in group.rule


def test_datasets_without_a_shared_unit_stay_apart(tmp_path):
    ledger = Ledger(RunStore(tmp_path / "home"))
    a = write(tmp_path / "a.jsonl", rows())
    b = write(tmp_path / "b.jsonl", [{"text": f"other {i}", "user_id": f"other-{i}"} for i in range(30)])
    for name, path in (("a", a), ("b", b)):
        ledger.record_run(run_id=name, name=name, prepared=prepared(path, plan()), steps=STEPS, seeded=False)
    assert sorted(len(d.entries) for d in ledger.datasets()) == [1, 1]
    # one person in common (by user id only, different texts) joins them
    c = write(tmp_path / "c.jsonl", [{"text": "a new note", "user_id": "user-0"}, {"text": "x", "user_id": "z"}])
    ledger.record_run(run_id="c", name="c", prepared=prepared(c, plan()), steps=STEPS, seeded=False)
    assert sorted(len(d.entries) for d in ledger.datasets()) == [1, 2]


def test_an_example_level_replace_one_run_gives_a_user_level_group_no_total(tmp_path):
    path = write(tmp_path / "d.jsonl", rows())
    ledger = Ledger(RunStore(tmp_path / "home"))
    ledger.record_run(
        run_id="ex", name=None, prepared=prepared(path, plan(neighboring="replace_one")), steps=STEPS, seeded=False
    )
    ledger.record_run(run_id="user", name=None, prepared=prepared(path, plan("user")), steps=STEPS, seeded=False)
    (group,) = ledger.datasets()
    assert group.total.epsilon is None and "exact number of examples" in group.total.note


def test_the_unit_hashes_are_keyed_with_a_secret_of_the_home(tmp_path):
    path = write(tmp_path / "d.jsonl", rows())
    home = tmp_path / "home"
    Ledger(RunStore(home)).record_run(run_id="r", name=None, prepared=prepared(path, plan()), steps=STEPS, seeded=False)
    assert stat.S_IMODE(os.stat(home / KEY_FILE).st_mode) == 0o600
    key_hex = (home / KEY_FILE).read_text().strip()
    database = (home / "runs.sqlite").read_bytes() + b"".join(p.read_bytes() for p in home.glob("runs.sqlite-*"))
    assert bytes.fromhex(key_hex) not in database and key_hex.encode() not in database
    for example, user in unit_identities(load_dataset(path)):  # nothing unkeyed is stored
        assert example[:16] not in database and user[:16] not in database
    (home / KEY_FILE).unlink()  # a lost key is said, not silently replaced by a new one
    result = CliRunner().invoke(cli_app, ["ledger", "--data", path], env={"WORKBENCH_HOME": str(home)})
    assert result.exit_code == 2 and "unit key" in result.output and "Traceback" not in result.output


OLD_LEDGER = """
CREATE TABLE ledger (run_id TEXT PRIMARY KEY, name TEXT, time REAL NOT NULL, fingerprint TEXT NOT NULL,
    dataset_name TEXT, data_path TEXT, privacy_unit TEXT NOT NULL, neighboring TEXT NOT NULL, delta REAL NOT NULL,
    epsilon REAL, steps INTEGER NOT NULL, accountant TEXT, dp_event TEXT NOT NULL,
    non_private INTEGER NOT NULL DEFAULT 0, note TEXT, tuning_session TEXT, tuning_distribution TEXT,
    tuning_mean REAL, tuning_shape REAL);
"""


def test_rows_stored_before_units_keep_their_group_and_say_so(tmp_path):
    path = write(tmp_path / "d.jsonl", rows())
    home = tmp_path / "home"
    home.mkdir()
    old = plan()
    con = sqlite3.connect(home / "runs.sqlite")
    con.executescript(OLD_LEDGER)
    fingerprint = dataset_fingerprint(load_dataset(path), privacy_unit="example")  # the old key of a row
    for i in range(2):
        con.execute(
            "INSERT INTO ledger VALUES (?, NULL, ?, ?, 'd.jsonl', 'd.jsonl', 'example', 'add_remove', 1e-5, ?, ?, "
            "'pld', ?, 0, NULL, NULL, NULL, NULL, NULL)",
            (
                f"old{i}",
                1000.0 + i,
                fingerprint,
                old.epsilon_at(STEPS),
                STEPS,
                dp_events.event_to_json(old.dp_event(STEPS)),
            ),
        )
    con.commit()
    con.close()
    ledger = Ledger(RunStore(home))
    ledger.record_run(run_id="new", name=None, prepared=prepared(path, plan()), steps=STEPS, seeded=False)
    legacy, new = sorted(ledger.datasets(), key=lambda d: len(d.entries), reverse=True)
    assert [e.run_id for e in legacy.entries] == ["old0", "old1"] and legacy.legacy and not new.legacy
    assert legacy.total.epsilon == pytest.approx(oracle([old.dp_event(STEPS)] * 2), rel=0.01)
    shown = CliRunner().invoke(cli_app, ["ledger", "--data", path], env={"WORKBENCH_HOME": str(home)})
    assert shown.exit_code == 0 and "old0" in shown.output and "new" in shown.output
    assert LEGACY_NOTE[:60] in " ".join(shown.output.split())


# -- item 2 (the ledger's half): a run stopped by hand counts as its planned schedule ---------------------


def test_a_run_stopped_by_hand_is_composed_at_its_planned_steps(tmp_path):
    store = RunStore()
    data = write(tmp_path / "d.jsonl", rows())
    cfg = RunConfig(**{**TINY_RUN, "max_steps": 4, "noise_multiplier": 1.0, "data": data})
    s = Session(cfg, store=store, stop_after=1)
    summary = s.run()
    assert summary["status"] == "stopped" and summary["steps"] == 1
    entry = Ledger(store).get(s.run_id)
    step = dp_event.PoissonSampledDpEvent(summary["sample_rate"], dp_event.GaussianDpEvent(summary["noise_multiplier"]))
    assert entry.steps == 4 and entry.event == dp_event.SelfComposedDpEvent(step, 4)
    assert "stopped by hand after 1 of 4 steps" in entry.note
    finished = Ledger(store).record_run(
        run_id="done", name=None, prepared=prepared(data, plan()), steps=3, seeded=False
    )
    assert finished.steps == 3 and finished.event.count == 3  # finished or stopped at the budget: the steps done


# -- item 5: replays ---------------------------------------------------------------------------------------


def replay(run_id: str):
    return CliRunner().invoke(cli_app, ["runs", "replay", run_id, "--json"])


def test_a_replay_on_changed_data_is_refused_and_one_on_the_same_data_is_a_copy(tmp_path):
    path = tmp_path / "data.jsonl"
    write(path, rows())
    store = RunStore()
    cfg = RunConfig(**{**TINY_RUN, "max_steps": 2, "noise_multiplier": 1.0, "data": str(path)})
    original = Session(cfg, store=store)
    assert original.run()["status"] == "finished"
    before = {r.id for r in store.list()}

    edited = rows()
    edited[4]["text"] += " (corrected)"
    write(path, edited)  # a neighbouring dataset under the same name
    refused = replay(original.run_id)
    assert refused.exit_code == 2 and "Traceback" not in refused.output
    assert len(refused.output.strip().splitlines()) == 1 and "refusing to replay" in refused.output
    shuffled = rows()
    random.Random(1).shuffle(shuffled)
    write(path, shuffled)  # the same records in another order: other batches under the same noise
    assert replay(original.run_id).exit_code == 2
    assert {r.id for r in store.list()} == before  # nothing trained
    key = RunRandomness.load(store.run_dir(original.run_id), run_id=original.run_id)
    direct = Session(cfg, store=store, randomness=key, replay_of=original.run_id).run()  # the Python API: refused too
    assert direct["status"] == "failed" and "refusing to replay" in direct["reason"] and not direct["adapter_dir"]

    write(path, rows())
    done = replay(original.run_id)
    assert done.exit_code == 0, done.output
    out = json.loads(done.stdout[done.stdout.index("{") :])
    assert out["identical_adapter"] is True
    ledger = Ledger(store)
    copy = ledger.get(out["replay_id"])
    assert copy.replay_of == original.run_id and "not counted again" in copy.note
    (group,) = ledger.datasets()
    assert {e.run_id for e in group.entries} == {original.run_id, copy.run_id}  # the refused one took no step
    assert group.total.runs == 1 and group.total.epsilon == pytest.approx(ledger.get(original.run_id).epsilon, rel=0.01)
    with pytest.raises(ExportError, match="copy of that release"):
        export_run(store, out["replay_id"], tmp_path / "out")
    cli = CliRunner().invoke(cli_app, ["runs", "export", out["replay_id"], str(tmp_path / "cli")])
    assert cli.exit_code == 2 and f"Export {original.run_id} instead" in cli.output
