"""The client-level mechanism of DPFedAvg (workbench/federated/strategy.py) against what the accountant assumes:
Poisson client sampling at q = M/K, every sampled update clipped to C, N(0, sigma^2 C^2) added once to the sum."""

import numpy as np
import pytest
from scipy import stats

pytest.importorskip("flwr")

from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict  # noqa: E402

from workbench.engine.randomness import RunRandomness  # noqa: E402
from workbench.federated.strategy import AllClientsFailed, DPFedAvg, RoundResult  # noqa: E402


class Grid:
    """The grid as configure_train reads it: the connected nodes."""

    def __init__(self, nodes):
        self.nodes = nodes

    def get_node_ids(self):
        return list(self.nodes)


@pytest.fixture
def task_identity(monkeypatch):
    """A Message is built inside a Flower task (its run, node and task ids); a test is none."""
    from flwr.supercore.task_identity import TaskIdentity

    for name in ("_run_id", "_node_id", "_task_id"):
        monkeypatch.setattr(TaskIdentity, name, 1)


def strategy(*, clients=10, q=0.3, clip=1.0, sigma=0.7, key=None):
    r = RunRandomness.secret() if key is None else RunRandomness(key)
    return DPFedAvg(
        sample_rate=q,
        clients=clients,
        clip=clip,
        noise_multiplier=sigma,
        sampling_rng=r.sampling_rng(),
        noise=r.noise(threads=1),
    )


def updates(m, d, rng, scale=3.0):
    """m updates of d coordinates, most of them longer than C = 1 (so clipping acts)."""
    return [
        {"a": rng.normal(0, scale / np.sqrt(d), d), "b": rng.normal(0, scale / np.sqrt(d), (2, 3))} for _ in range(m)
    ]


def clipped_sum(ups, clip):
    total = {k: np.zeros_like(v) for k, v in ups[0].items()}
    for u in ups:
        norm = np.sqrt(sum(np.sum(v**2) for v in u.values()))
        for k in u:
            total[k] += u[k] * min(1.0, clip / norm)
    return total


@pytest.mark.parametrize("m", [1, 4, 16])
def test_released_minus_clipped_sum_has_the_noise_std_once_whatever_m(m):
    """released * qK - (sum of the clipped updates) ~ N(0, (sigma C)^2) per coordinate (KS test), the same std for
    1, 4 or 16 replies: the noise is added once to the sum, not once per client."""
    rng = np.random.default_rng(m)
    s = strategy(clients=20, q=0.25, clip=0.5, sigma=0.8)
    d = 400
    s.current = {"a": np.zeros(d), "b": np.zeros((2, 3))}
    residuals = []
    for _ in range(5):  # 5 rounds, d + 6 coordinates each
        ups = updates(m, d, rng)
        released = s.release(ups, RoundResult(1, []))
        expected = clipped_sum(ups, 0.5)
        for k in released:
            residuals.append((released[k] * 0.25 * 20 - expected[k]).ravel())
    residuals = np.concatenate(residuals)
    std = 0.8 * 0.5
    assert stats.kstest(residuals / std, "norm").pvalue > 1e-3
    assert abs(residuals.std() / std - 1) < 0.05  # not sqrt(m) times larger


def test_every_update_is_clipped_to_c_before_the_sum():
    s = strategy(sigma=1e-9, clip=1.0)  # noise negligible: the released sum is the clipped sum
    s.current = {"a": np.zeros(3)}
    ups = [{"a": np.array([30.0, 40.0, 0.0])}, {"a": np.array([0.0, 0.3, 0.4])}]
    result = RoundResult(1, [])
    released = s.release(ups, result)
    np.testing.assert_allclose(released["a"] * s.sample_rate * s.clients, [0.6, 1.1, 0.4], atol=1e-6)
    assert result.norms == pytest.approx([50.0, 0.5])


def test_client_sampling_is_poisson_at_rate_m_over_k():
    """Each client is in a round with probability q = M/K, independently: the per-client frequency over 2,000
    rounds is within binomial error of q, and the number per round has the Binomial(K, q) mean and variance (a
    fixed-size sample of M would have variance 0)."""
    k, q, rounds = 12, 0.25, 2000
    s = strategy(clients=k, q=q)
    nodes = list(range(100, 100 + k))
    picks = np.zeros((rounds, k), dtype=bool)
    for r in range(rounds):
        for n in s.sample(nodes):
            picks[r, n - 100] = True
    freq = picks.mean(axis=0)
    se = np.sqrt(q * (1 - q) / rounds)
    assert np.all(np.abs(freq - q) < 4.5 * se)
    counts = picks.sum(axis=1)
    assert abs(counts.mean() - k * q) < 4 * np.sqrt(k * q * (1 - q) / rounds)
    assert counts.var() == pytest.approx(k * q * (1 - q), rel=0.15)
    assert (counts == 0).any()  # an empty round happens, and stays a round (below)


def test_the_sampling_stream_is_the_server_key(task_identity):
    """Two servers with the same key sample the same clients; with fresh secret keys they differ."""
    key = bytes(range(32))
    a, b = strategy(key=key), strategy(key=key)
    nodes = range(10)
    assert [a.sample(nodes) for _ in range(20)] == [b.sample(nodes) for _ in range(20)]
    c, d = strategy(), strategy()
    assert [c.sample(nodes) for _ in range(20)] != [d.sample(nodes) for _ in range(20)]


def _arrays(v):
    return ArrayRecord({"a": Array(np.asarray(v, dtype=np.float32))})


def _reply(msg, value, client=0):
    metrics = MetricRecord({"num-examples": 1, "client": client, "loss": 1.0, "examples": 2, "epsilon": 1.0})
    return Message(content=RecordDict({"arrays": _arrays(value), "metrics": metrics}), reply_to=msg)


def test_a_round_through_flower_messages(task_identity):
    """configure_train sends the adapter to the sampled nodes; aggregate_train clips the replies' updates, adds the
    noise once and divides by qK; a failed client counts as nothing and is reported."""
    s = strategy(clients=3, q=1.0, clip=1.0, sigma=1e-9)
    seen = []
    s.on_round = seen.append
    msgs = list(s.configure_train(1, _arrays([1.0, 1.0]), ConfigRecord(), Grid([7, 8, 9])))
    assert sorted(m.metadata.dst_node_id for m in msgs) == [7, 8, 9]
    replies = [_reply(msgs[0], [4.0, 5.0]), _reply(msgs[1], [1.0, 1.5]), Message(Error(0, "boom"), reply_to=msgs[2])]
    arrays, metrics = s.aggregate_train(1, replies)
    # updates (3, 4) -> clipped to (0.6, 0.8); (0, 0.5) kept; sum / (qK = 3) added to (1, 1)
    np.testing.assert_allclose(arrays["a"].numpy(), [1 + 0.6 / 3, 1 + 1.3 / 3], atol=1e-5)
    assert metrics["failures"] == 1.0 and seen[0].failures == ["node 9: boom"]
    assert seen[0].bytes_sent == 3 * 8


def test_a_round_whose_every_client_failed_ends_the_run_with_one_message(task_identity):
    s = strategy(clients=2, q=1.0)
    msgs = list(s.configure_train(1, _arrays([0.0]), ConfigRecord(), Grid([1, 2])))
    with pytest.raises(AllClientsFailed, match="every sampled client failed.*out of memory"):
        s.aggregate_train(1, [Message(Error(0, "out of memory"), reply_to=m) for m in msgs])


def test_an_empty_round_still_releases_noise():
    s = strategy(clients=5, q=0.2, clip=1.0, sigma=1.0)
    s.current = {"a": np.zeros(1000)}
    released = s.release([], RoundResult(1, []))
    assert released["a"].std() == pytest.approx(1.0 / (0.2 * 5), rel=0.1)


def test_without_noise_the_update_is_the_plain_mean():
    r = RunRandomness.secret()
    s = DPFedAvg(sample_rate=0.5, clients=4, clip=None, noise_multiplier=0, sampling_rng=r.sampling_rng())
    s.current = {"a": np.zeros(2)}
    out = s.release([{"a": np.array([1.0, 0.0])}, {"a": np.array([3.0, 2.0])}], RoundResult(1, []))
    np.testing.assert_allclose(out["a"], [2.0, 1.0])


class LateGrid(Grid):
    """Nodes that register while the server starts: none on the first look."""

    def __init__(self, nodes):
        super().__init__(nodes)
        self.looks = 0

    def get_node_ids(self):
        self.looks += 1
        return [] if self.looks == 1 else list(self.nodes)


def test_the_server_waits_for_every_client_to_connect(task_identity):
    s = strategy(clients=3, q=1.0)
    grid = LateGrid([4, 5, 6])
    msgs = list(s.configure_train(1, _arrays([0.0]), ConfigRecord(), grid))
    assert sorted(m.metadata.dst_node_id for m in msgs) == [4, 5, 6] and grid.looks >= 2
