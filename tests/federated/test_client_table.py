"""The per-client table, round by round (workbench/federated/table.py): each round's ClientMetrics event carries a
row per client (the sampled ones with what the server holds of them), through the same event bus the dashboards
read; the stored run gives the same table back; the app's Federated tab shows it after the first round.

Flower's ``Strategy.start`` runs the rounds on an in-process grid (each ClientApp answered in this process, as a
SuperNode would): the real ServerApp body (``FederatedRun.serve``) without Ray's start-up."""

import math

import pytest

pytest.importorskip("flwr")

from flwr.app import Context, Error, Message, RecordDict  # noqa: E402

from workbench.config import RunConfig  # noqa: E402
from workbench.events import ClientMetrics  # noqa: E402
from workbench.federated.options import FederatedOptions  # noqa: E402
from workbench.federated.run import FederatedRun, client_app  # noqa: E402
from workbench.federated.table import stored_table, table  # noqa: E402
from workbench.store.runs import RunStore  # noqa: E402

TINY = dict(model="tiny", batch_size=4, physical_batch_size=8, generate_max_new_tokens=0, eval_max_examples=8)


class InProcessGrid:
    """Flower's grid as ``Strategy.start`` uses it: the nodes, and each message answered by the ClientApp in this
    process under the node's identity (node id 100 + its partition id). ``crash``: partition ids whose app raises."""

    def __init__(self, app, clients, crash=()):
        self.app, self.crash = app, set(crash)
        self.nodes = {100 + c: c for c in range(clients)}

    def get_node_ids(self):
        return list(self.nodes)

    def send_and_receive(self, messages, *, timeout=None):
        from flwr.supercore.task_identity import TaskIdentity

        out = []
        for m in messages:
            node = m.metadata.dst_node_id
            TaskIdentity._node_id = node  # the reply's source, as on the node's SuperNode
            if self.nodes[node] in self.crash:
                out.append(Message(Error(0, "client lost its disk"), reply_to=m))
                continue
            context = Context(
                run_id=1,
                node_id=node,
                node_config={"partition-id": self.nodes[node]},
                state=RecordDict(),
                run_config={},
            )
            out.append(self.app(m, context))
        return out


@pytest.fixture(autouse=True)
def task_identity(monkeypatch):
    from flwr.supercore.task_identity import TaskIdentity

    for name in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, name, 1)


def run_rounds(settings, *, crash=(), subscribers=(), **kw):
    store = RunStore()
    seen = []
    config = RunConfig.from_dict({**TINY, "target_epsilon": 8.0, "max_grad_norm": 1.0, **kw})
    run = FederatedRun(config, settings, store=store, name="table", subscribers=[seen.append, *subscribers])
    grid = InProcessGrid(client_app(run.spec), settings.clients, crash)
    summary = run.stored(lambda: run.serve(grid))
    assert summary["status"] == "finished", summary["reason"]
    return store, summary, [e for e in seen if isinstance(e, ClientMetrics)]


def test_client_level_rounds_carry_a_row_per_sampled_client_marked_as_telemetry(tmp_path):
    store, summary, tables = run_rounds(FederatedOptions(3, 2, 3, "by-user", "client"), crash={2})
    assert [t.step for t in tables] == [1, 2] and all(t.level == "client" and t.clip == 1.0 for t in tables)
    assert {"update_norm", "clipped", "loss", "sampled"} <= set(tables[0].telemetry)
    for t in tables:  # q = 1: every client sampled; client 2 failed, unknown to the server (it never replied)
        heard = [r for r in t.rows if r.get("index") is not None and r["sampled"]]
        assert [r["index"] for r in heard] == [0, 1]
        for r in heard:
            assert r["examples"] > 0 and not r["failed"] and math.isfinite(r["loss"]) and r["update_norm"] > 0
            assert r["clipped"] == (r["update_norm"] > 1.0) and r["epsilon"] is None
        assert [r["failed"] for r in t.rows if r.get("index") is None] == [True]
        assert [r for r in t.rows if r.get("index") == 2][0]["sampled"] is False
    assert [r["rounds"] for r in tables[-1].rows[:3]] == [2, 2, 0]
    # the stored run gives the same events and the same table back
    stored = [e for _, e in store.events(summary["run_id"], kinds=("clients",))]
    assert stored == tables
    assert stored_table(store, summary["run_id"]) == table(tables[-1])
    heads, rows = table(tables[-1])
    assert "update norm (before clipping) †" in heads and len(rows) == 4
    # an export leaves the table out (telemetry), unless asked for the telemetry
    import json

    from workbench.store.export import export_run

    out = export_run(store, summary["run_id"], tmp_path)
    assert "clients" not in json.loads((out / "summary.json").read_text())


def test_record_level_rows_carry_each_clients_local_epsilon_and_no_server_clip():
    settings = FederatedOptions(3, 2, 3, "by-user", "record")
    store, summary, tables = run_rounds(settings, noise_multiplier=1.0, target_epsilon=None)
    assert tables[0].telemetry == ["loss"] and tables[0].clip is None
    for t in tables:
        assert [r["index"] for r in t.rows if r["sampled"]] == [0, 1, 2]
        for r, eps in zip(t.rows, summary["client_epsilons"]):
            assert r["clipped"] is None and r["epsilon"] is not None and 0 < r["epsilon"] <= eps + 1e-9
    assert [r["epsilon"] for r in tables[-1].rows] == pytest.approx(summary["client_epsilons"])


def test_the_federated_tab_shows_the_table_after_the_first_round():
    pytest.importorskip("gradio")
    from workbench.app import federated
    from workbench.app.state import AppContext

    settings = FederatedOptions(2, 2, 2, "by-user", "client")
    config = RunConfig.from_dict({**TINY, "target_epsilon": 8.0, "max_grad_norm": 1.0})
    ctx = AppContext(store=RunStore())
    job = federated.FederatedJob(config, settings.to_dict())
    assert federated.update(ctx, job)[1]["data"] == []  # nothing before the run
    shown = []

    def after_round(event):
        if isinstance(event, ClientMetrics) and event.step == 1:
            shown.append(federated.update(ctx, job))

    run = FederatedRun(config, settings, store=ctx.store, name="tab", subscribers=[job.on_event, after_round])
    run.stored(lambda: run.serve(InProcessGrid(client_app(run.spec), 2)))
    text, value, polling = shown[0]
    assert polling and len(value["data"]) == 2 and value["data"][0][0] == "client-0"
    assert value["headers"][0] == "client" and value["data"][0][2] == "yes"  # sampled this round (q = 1)
