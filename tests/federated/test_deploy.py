"""The deployment engine's entry (workbench/federated/deploy.py): the objects ``flwr run`` loads are Flower apps,
the run config is read with one message for a bad one, and the ClientApp answers a train message in process (no
network, no SuperLink)."""

import pytest

pytest.importorskip("flwr")

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict  # noqa: E402
from flwr.clientapp import ClientApp  # noqa: E402
from flwr.serverapp import ServerApp  # noqa: E402

from workbench.federated import deploy  # noqa: E402
from workbench.federated.partition import FederatedError  # noqa: E402

RUN_CONFIG = {
    "set": "model=tiny;batch_size=4;physical_batch_size=8;generate_max_new_tokens=0;eval_max_examples=8;"
    "privacy.target_epsilon=8;max_grad_norm=1.0",
    "clients": 3,
    "rounds": 2,
    "clients-per-round": 2,
}


def test_the_module_exposes_a_server_app_and_a_client_app():
    assert isinstance(deploy.server_app, ServerApp) and isinstance(deploy.client_app, ClientApp)


def test_the_run_config_is_read_and_a_bad_one_is_one_message():
    config, settings, name = deploy.settings_from(RUN_CONFIG)
    assert config.model == "tiny" and config.batch_size == 4 and config.target_epsilon == 8
    assert (settings.clients, settings.rounds, settings.clients_per_round) == (3, 2, 2) and name is None
    assert settings.partition == "by-user" and settings.privacy_level == "client"
    with pytest.raises(FederatedError, match="unknown key"):
        deploy.settings_from({**RUN_CONFIG, "clinets": 3})
    with pytest.raises(FederatedError, match="clients-per-round 5"):
        deploy.settings_from({**RUN_CONFIG, "clients-per-round": 5})


def test_the_client_app_trains_its_partition_on_a_train_message(monkeypatch):
    from flwr.supercore.task_identity import TaskIdentity

    from workbench.federated.run import _spec, federation

    for attr, value in (("_task_id", 1), ("_run_id", 1), ("_node_id", 0)):  # what a SuperLink's task would set
        monkeypatch.setattr(TaskIdentity, attr, value)

    config, settings, _ = deploy.settings_from(RUN_CONFIG)
    fed = federation(_spec(config, settings))
    start = fed.arrays()
    content = RecordDict(
        {
            "arrays": ArrayRecord({k: Array(v) for k, v in start.items()}),
            "config": ConfigRecord({"server-round": 1}),
        }
    )
    msg = Message(content=content, dst_node_id=7, message_type="train")
    context = Context(run_id=1, node_id=7, node_config={"partition-id": 1}, state=RecordDict(), run_config=RUN_CONFIG)
    out = deploy.client_app(msg, context)
    assert not out.has_error(), out.error
    metrics = out.content["metrics"]
    assert metrics["client"] == 1 and metrics["examples"] > 0
    arrays = {k: v.numpy() for k, v in out.content["arrays"].items()}
    assert set(arrays) == set(start) and any((arrays[k] != start[k]).any() for k in start)  # it trained
