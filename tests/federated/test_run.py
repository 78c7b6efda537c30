"""A federated run end to end through Flower's simulation engine (Ray), on the tiny model: stored with its status
and its rounds as steps, a crashing client, nothing left running. About a minute each on 2 CPU cores (Ray's
start-up is most of it): those two are marked slow."""

import pytest

pytest.importorskip("ray")

from workbench.config import RunConfig  # noqa: E402
from workbench.events import RunEnded, RunStarted, StepMetrics  # noqa: E402
from workbench.federated import FederatedError, FederatedOptions, federate  # noqa: E402
from workbench.store.runs import RunStore  # noqa: E402

TINY = dict(model="tiny", batch_size=4, physical_batch_size=8, generate_max_new_tokens=0, eval_max_examples=8)


def config(**kw):
    return RunConfig.from_dict({**TINY, "target_epsilon": 8.0, "max_grad_norm": 1.0, **kw})


def crash(partitions):
    """A Flower client mod: the clients whose partition-id is in ``partitions`` raise mid-round."""

    def mod(msg, context, call_next):
        if int(context.node_config["partition-id"]) in partitions:
            raise RuntimeError("client lost its disk")
        return call_next(msg, context)

    return mod


def _left_running(grace=15.0):
    """Ray's processes among this process's children, after up to ``grace`` seconds for them to exit."""
    import time

    import psutil

    deadline = time.time() + grace
    while True:
        names = [p.name() for p in psutil.Process().children(recursive=True) if p.is_running()]
        ray = [n for n in names if "raylet" in n or "gcs_server" in n]
        if not ray or time.time() > deadline:
            return ray
        time.sleep(0.5)


@pytest.mark.slow
def test_a_client_level_run_is_stored_with_its_rounds_as_steps_and_survives_a_crashing_client():
    import ray

    store = RunStore()
    summary = federate(
        config(),
        FederatedOptions(clients=3, rounds=2, clients_per_round=3),
        store=store,
        client_mods=[crash({1})],
        name="fed",
    )
    assert summary["status"] == "finished", summary["reason"]
    record = store.get(summary["run_id"])
    assert record.status == "finished" and record.name == "fed"
    events = [e for _, e in store.events(summary["run_id"])]
    started = [e for e in events if isinstance(e, RunStarted)][0]
    steps = [e for e in events if isinstance(e, StepMetrics)]
    assert [s.step for s in steps] == [1, 2] and started.planned_steps == 2 and started.privacy_unit == "client"
    assert all(s.batch_size == 2 for s in steps)  # q = 1: every client sampled; client 1 crashed each round
    assert all(any("client lost its disk" in n["message"] for n in s.notices) for s in steps)
    assert steps[-1].epsilon == pytest.approx(summary["epsilon"]) and summary["epsilon"] <= 8.0
    assert all(s.module_noise_std["adapter"] == pytest.approx(summary["noise_multiplier"] * 1.0) for s in steps)
    assert isinstance(events[-1], RunEnded)
    rows = {c["client"]: c for c in summary["clients"]}
    assert rows["client-1"]["rounds"] == 0 and rows["client-0"]["rounds"] == 2
    assert summary["bytes_per_round"] > 0 and summary["adapter_dir"]
    # the dashboard: the live rows (the app's stream) and the notebooks' view and panels read the rounds as steps
    from workbench import present
    from workbench.present.live import rows
    from workbench.present.view import RunView

    live = rows(store.events(summary["run_id"]))
    assert [r["step"] for r in live["steps"]] == [1, 2] and live["ended"]["status"] == "finished"
    view = RunView.from_events(summary["run_id"], store.events(summary["run_id"]))
    assert present.panels(view)
    assert not ray.is_initialized()
    assert _left_running() == []


@pytest.mark.slow
def test_a_round_whose_every_client_crashes_fails_the_run_with_one_message():
    store = RunStore()
    summary = federate(config(), FederatedOptions(2, 2, 2), store=store, client_mods=[crash({0, 1})])
    assert summary["status"] == "failed", summary["reason"]
    assert "every sampled client failed" in summary["reason"], summary["reason"]
    assert "client lost its disk" in summary["reason"], summary["reason"]
    assert store.get(summary["run_id"]).status == "failed"
    assert _left_running() == []


def test_bad_settings_fail_before_anything_is_stored():
    store = RunStore()
    with pytest.raises(FederatedError, match="more than the"):
        federate(config(), FederatedOptions(clients=5000, rounds=2, clients_per_round=2), store=store)
    with pytest.raises(FederatedError, match="--clients-per-round"):
        federate(config(), FederatedOptions(clients=3, rounds=2, clients_per_round=4), store=store)
    assert store.list() == []
