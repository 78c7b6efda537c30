"""Noise sources 2 and 3 (engine/noise.py, issue 29): a ChaCha20 keystream per (step, chunk), the polar method in
float64, four draws over two, made a step ahead on a thread (the KS, tail and frequency tests on source 2 are in
tests/privacy/test_true_epsilon.py; source 3's, here). Source 3 is source 2's construction with a log of its own
(fdlibm's, IEEE operations only) in one compiled numba loop, checked bit for bit against its numpy reference. Its construction and single draws, replay independent of the number of
threads, old runs replaying with source 1, the key staying in the process, and no thread left behind."""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import multiprocessing
import pickle
import struct
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from factories import TINY_RUN
from scipy import stats
from typer.testing import CliRunner

from workbench.cli import app
from workbench.config import RunConfig
from workbench.engine import noise as noise_mod
from workbench.engine.dp_step import DPGradient
from workbench.engine.noise import CHUNK, NOISE_VERSION, GaussianNoise, KeystreamNoise, single_draws
from workbench.engine.randomness import KEY_FILE, ReplayError, RunRandomness
from workbench.session import Session
from workbench.store.runs import RunStore

FAST = dict(TINY_RUN, max_steps=3, noise_multiplier=1.0)


def noise_threads(before: frozenset = frozenset()) -> list[threading.Thread]:
    """The noise threads alive now that were not in ``before`` (sources other tests dropped may still be ending)."""
    return [t for t in threading.enumerate() if t.name.startswith("workbench-noise") and t not in before]


def threads_now() -> frozenset:
    return frozenset(noise_threads())


def reference_chunk(noise_key: bytes, step: int, chunk: int, version: int = 2) -> np.ndarray:
    """The construction written out plainly (an independent implementation of the module docstring); version 3's
    log is noise.log_ieee (itself checked against the math library's log below)."""
    label = b"workbench/noise-v%d/" % version
    key = hmac.new(noise_key, label + struct.pack("<QQ", step, chunk), hashlib.sha256).digest()
    candidates = 2 * CHUNK * 21 // 16
    stream = Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None).encryptor().update(bytes(16 * candidates))
    j = np.frombuffer(stream, dtype="<i8") >> 11  # signed top 53 bits
    x = (2.0 * j + 1.0) / 2.0**53
    u, v = x[:candidates], x[candidates:]
    s = u * u + v * v
    pairs = list(range(2 * CHUNK))  # pair p: candidate p, or (outside the disc) the next spare one inside it
    spares = iter(q for q in range(2 * CHUNK, candidates) if s[q] < 1.0)
    pairs = np.array([p if s[p] < 1.0 else next(spares) for p in pairs])
    log = np.log if version == 2 else noise_mod.log_ieee
    f = np.sqrt(-2.0 * log(s[pairs]) / s[pairs])
    z1, z2 = u[pairs] * f, v[pairs] * f  # pair p's two values
    n = CHUNK
    i = np.arange(n)
    return ((z1[i] + z1[n + i]) + (z2[(i + 1) % n] + z2[n + (i + 1) % n])) / 2


@pytest.mark.parametrize("version", [2, 3])
def test_values_are_the_plain_construction_from_the_key_bit_for_bit(version):
    """Bit for bit, not within a tolerance: stored runs replay exactly, so any change to the arithmetic (an
    optimisation that reorders a sum, folds a constant differently) must fail here and become a new source version.
    The module folds the /2 into f (exact: a power of two), so only the order of the sums has to match."""
    key = RunRandomness.secret()._derive(b"gaussian-noise-v%d" % version)
    with KeystreamNoise(key, threads=2, version=version) as source:
        first = source.draw_step([CHUNK + 5]).copy()
        second = source.draw_step([3]).copy()
    np.testing.assert_array_equal(first[:CHUNK], reference_chunk(key, 1, 0, version))
    np.testing.assert_array_equal(first[CHUNK:], reference_chunk(key, 1, 1, version)[:5])
    np.testing.assert_array_equal(second, reference_chunk(key, 2, 0, version)[:3])


def test_the_compiled_loop_gives_the_numpy_passes_bits_on_many_chunks():
    """Source 3's numba loop against the same construction in numpy passes (noise.numpy_chunk), 96 chunks of 3
    steps: no fused multiply-add, no reordering, the same accept/reject replacement."""
    key = RunRandomness.secret()._derive(b"gaussian-noise-v3")
    ws, fast, slow = noise_mod._Workspace(), np.empty(CHUNK), np.empty(CHUNK)
    for step in (1, 2, 2**40):
        for c in range(32):
            noise_mod.fill_chunk(key, step, c, fast, ws, version=3)
            noise_mod.numpy_chunk(key, step, c, slow, noise_mod._Workspace(), version=3)
            assert fast.tobytes() == slow.tobytes(), (step, c)


def test_source_3_takes_the_numpy_path_when_the_spares_run_short(monkeypatch):
    """The ~1e-32 case: the loop gives up and the numpy path reads more keystream; the chunk's values are the same."""
    key = RunRandomness.secret()._derive(b"gaussian-noise-v3")
    want = np.empty(CHUNK)
    noise_mod.fill_chunk(key, 1, 0, want, version=3)
    monkeypatch.setattr(noise_mod, "_fused_chunk", lambda *arrays: False)
    got = np.empty(CHUNK)
    noise_mod.fill_chunk(key, 1, 0, got, version=3)
    assert got.tobytes() == want.tobytes()


def test_source_3s_log_is_within_one_ulp_of_the_math_library():
    """fdlibm's log in IEEE operations: within 1 ulp of libm's over (0, 1), from 2^-106 (the smallest s) up."""
    rng = np.random.default_rng(0)
    s = np.concatenate([rng.random(200_000), 2.0 ** rng.uniform(-106, 0, 200_000), [2.0**-106, 0.5, 1 - 2**-53]])
    want = np.array([math.log(x) for x in s])
    got = noise_mod.log_ieee(s)
    assert np.all(np.abs(got - want) <= np.spacing(np.abs(want)))


def test_source_3s_draws_are_normal_with_the_tails():
    """KS on 64 chunks of single draws, and the two-sided mass beyond 4 sigma within 5 sd of its binomial."""
    key = RunRandomness.secret()._derive(b"gaussian-noise-v3")
    z = np.concatenate([single_draws(key, 1, c, version=3) for c in range(64)])
    assert stats.kstest(z, "norm").pvalue > 1e-4
    p = 2 * stats.norm.sf(4.0)
    k, n = int(np.sum(np.abs(z) > 4.0)), len(z)
    assert abs(k - n * p) < 5 * math.sqrt(n * p * (1 - p))
    values = np.empty(CHUNK)
    noise_mod.fill_chunk(key, 1, 0, values, version=3)
    assert stats.kstest(values, "norm").pvalue > 1e-4


def test_single_draws_are_normal_and_reach_past_8_sigma_in_principle():
    """Each of the four draws is a float64 polar normal: KS-normal, and the smallest s (u = v = 2^-53) reaches ~12."""
    key = RunRandomness.secret()._derive(b"gaussian-noise-v2")
    z = single_draws(key, 1, 0)
    assert len(z) == 4 * CHUNK and stats.kstest(z, "norm").pvalue > 1e-4
    u = 2.0**-53
    s = 2 * u * u
    assert u * math.sqrt(-2 * math.log(s) / s) > 8.5


# -- replay: the same values whatever the threads ------------------------------------------------------------


@pytest.mark.parametrize("threads", [2, 4])
def test_steps_are_bit_identical_with_1_2_and_4_threads(threads):
    before = threads_now()
    key = RunRandomness.seeded(5)._derive(b"gaussian-noise-v3")
    sizes = [[3 * CHUNK + 17, 4], [3 * CHUNK + 17, 4], [10], [3 * CHUNK + 17, 4]]  # a shorter step in between
    with KeystreamNoise(key, threads=1, prefetch=False) as one, KeystreamNoise(key, threads=threads) as many:
        for s in sizes:
            a, b = one.draw_step(s), many.draw_step(s)
            assert a.tobytes() == b.tobytes()
    assert not noise_threads(before)


def test_a_value_depends_on_its_step_and_place_only():
    """A step's values do not depend on its length (whole chunks are made and cut), and steps differ."""
    key = RunRandomness.seeded(5)._derive(b"gaussian-noise-v2")
    with KeystreamNoise(key) as long, KeystreamNoise(key) as short:
        a, b = long.draw_step([CHUNK + 100]), short.draw_step([50])
        assert a[:50].tobytes() == b.tobytes()
        assert not np.array_equal(long.draw_step([50]), b)


def test_a_seeded_run_replays_and_a_secret_key_changes_everything():
    a, b = RunRandomness.seeded(3).noise(), RunRandomness.seeded(3).noise()
    np.testing.assert_array_equal(a.standard(1000), b.standard(1000))
    assert not np.array_equal(
        RunRandomness.seeded(3).noise().standard(1000), RunRandomness.secret().noise().standard(1000)
    )


@pytest.mark.slow  # a few tiny runs: 10-30 s on 2 busy cores
def test_a_run_replays_bit_for_bit_with_1_and_4_noise_threads():
    adapters = []
    for threads in (1, 4):  # the run config's knob (performance.noise_threads), as a user sets it
        config = RunConfig(**FAST).with_overrides([f"performance.noise_threads={threads}"])
        summary = Session(config, randomness=RunRandomness.seeded(11)).run()
        assert summary["status"] == "finished" and summary["noise_source"] == NOISE_VERSION
        adapters.append((Path(summary["adapter_dir"]) / "adapter_model.safetensors").read_bytes())
    assert adapters[0] == adapters[1]


# -- the step: one draw, one copy to the device, version 1 arithmetic unchanged ---------------------------------


def _toy(noise) -> tuple[DPGradient, list[torch.nn.Parameter]]:
    a, b = torch.nn.Parameter(torch.zeros(3, 4)), torch.nn.Parameter(torch.zeros(5))
    dp = DPGradient({"m1": [("w", a)], "m2": [("w", b)]}, max_grad_norm=1.0, noise_multiplier=2.0, noise=noise)
    return dp, [a, b]


def test_a_step_takes_one_draw_of_the_source_in_parameter_order():
    dp, params = _toy(RunRandomness.seeded(2).noise())
    dp.start()
    dp.finish(expected_batch_size=1.0)
    flat = RunRandomness.seeded(2).noise().draw_step([12, 5], ahead=False)
    std = dp.allocation.noise_std()
    got = torch.cat([p.grad.double().flatten() for p in params])
    want = torch.cat([torch.from_numpy(flat[:12]) * std["m1"], torch.from_numpy(flat[12:]) * std["m2"]])
    torch.testing.assert_close(got, want.float().double(), rtol=0, atol=0)
    dp.close()


def test_source_1_draws_as_it_always_did():
    """Version 1 runs replay bit for bit: one discarded draw and four draws / 2 per tensor, scaled, then added."""
    dp, params = _toy(RunRandomness.seeded(4, noise_version=1).noise())
    dp.start()
    dp.finish(expected_batch_size=1.0)
    old = RunRandomness.seeded(4, noise_version=1).noise()
    assert isinstance(old, GaussianNoise)
    std = dp.allocation.noise_std()
    for p, g in zip(params, ("m1", "m2")):
        out = torch.zeros(p.shape, dtype=torch.float64)
        out += torch.from_numpy(old.standard(p.numel()) * float(std[g])).reshape(p.shape)  # the old finish()
        assert torch.equal(p.grad, out.to(p.dtype))


# -- stored runs: the source is recorded, old key files are source 1 ----------------------------------------------


def test_the_key_file_records_the_source_and_old_key_files_are_source_1(tmp_path):
    new = RunRandomness.secret()
    new.save(tmp_path)
    assert (tmp_path / KEY_FILE).read_text().splitlines()[1] == f"noise-source {NOISE_VERSION}"
    assert RunRandomness.load(tmp_path, run_id="r").noise_version == NOISE_VERSION == 3
    (tmp_path / KEY_FILE).write_text(new.key.hex() + "\n")  # as runs before issue 29 wrote it
    old = RunRandomness.load(tmp_path, run_id="r")
    assert old.key == new.key and old.noise_version == 1 and isinstance(old.noise(), GaussianNoise)
    (tmp_path / KEY_FILE).write_text(new.key.hex() + "\nnoise-source 9\n")
    with pytest.raises(ReplayError, match="source 9, which this workbench version does not know"):
        RunRandomness.load(tmp_path, run_id="r")


@pytest.mark.slow  # a few tiny runs: 10-30 s on 2 busy cores
def test_a_run_stored_with_source_1_replays_identically():
    store = RunStore()
    session = Session(
        RunConfig(**FAST), store=store, randomness=RunRandomness(RunRandomness.secret().key, noise_version=1)
    )
    summary = session.run()
    assert summary["status"] == "finished" and summary["noise_source"] == 1
    key_file = store.run_dir(session.run_id) / KEY_FILE
    key_file.write_text(key_file.read_text().splitlines()[0] + "\n")  # the one-line key file of an older workbench
    replay = CliRunner().invoke(app, ["runs", "replay", session.run_id, "--json"])
    assert replay.exit_code == 0, replay.output
    assert json.loads(replay.stdout[replay.stdout.index("{") :])["identical_adapter"] is True


@pytest.mark.slow  # a few tiny runs: 10-30 s on 2 busy cores
def test_a_replay_keeps_the_originals_calibrated_sigma_when_the_calibration_changes(monkeypatch):
    """A run calibrated to a target replays with the sigma it calibrated, not a new calibration: a later version
    may calibrate another sigma within its tolerance (issue 31 sped calibration up), and the noise must not move."""
    from workbench.planning.mechanism import Mechanism

    store = RunStore()
    summary = Session(RunConfig(**{**FAST, "noise_multiplier": None, "target_epsilon": 6.0}), store=store).run()
    assert summary["status"] == "finished" and summary["noise_multiplier"] > 0
    calibrated = Mechanism.calibrated
    monkeypatch.setattr(  # a calibration that lands elsewhere in its tolerance (still within the target)
        Mechanism,
        "calibrated",
        lambda self, target: calibrated(self, target).with_sigma(calibrated(self, target).noise_multiplier * 1.00005),
    )
    replay = CliRunner().invoke(app, ["runs", "replay", summary["run_id"], "--json"])
    assert replay.exit_code == 0, replay.output
    out = json.loads(replay.stdout[replay.stdout.index("{") :])
    assert out["identical_adapter"] is True
    assert store.get(out["replay_id"]).summary["noise_multiplier"] == summary["noise_multiplier"]


@pytest.mark.slow  # a few tiny runs: 10-30 s on 2 busy cores
def test_a_seeded_run_replays_with_the_source_its_summary_names():
    store = RunStore()
    summary = Session(RunConfig(**FAST, noise_seed=7), store=store).run()
    assert summary["noise_source"] == NOISE_VERSION
    replay = CliRunner().invoke(app, ["runs", "replay", summary["run_id"], "--json"])
    assert replay.exit_code == 0, replay.output
    assert json.loads(replay.stdout[replay.stdout.index("{") :])["identical_adapter"] is True


# -- the key stays in the process; no thread outlives the run -------------------------------------------------


def test_the_key_never_leaves_the_process():
    before = threads_now()
    randomness = RunRandomness.secret()
    source = randomness.noise(threads=2)
    source.draw_step([3 * CHUNK])  # threads running: in this process, no child process
    assert noise_threads(before) and not multiprocessing.active_children()
    with pytest.raises(TypeError, match="never pickled"):
        pickle.dumps(source)
    noise_key = randomness._derive(b"gaussian-noise-v3")
    assert noise_key.hex() not in repr(source) and randomness.key.hex() not in repr(source)
    source.close()
    assert not noise_threads(before)


def test_a_run_leaves_no_key_in_its_store_but_the_key_file():
    store = RunStore()
    randomness = RunRandomness.secret()
    session = Session(RunConfig(**FAST), store=store, randomness=randomness)
    assert session.run()["status"] == "finished"
    noise_key = randomness._derive(b"gaussian-noise-v3")
    secrets_ = [randomness.key, noise_key, noise_mod.chunk_key(noise_key, 1, 0, 3)]
    files = [p for p in store.home.rglob("*") if p.is_file() and p.name != KEY_FILE]
    assert files
    for path in files:
        data = path.read_bytes()
        for s in secrets_:
            assert s not in data and s.hex().encode() not in data, path


@pytest.mark.slow  # a few tiny runs: 10-30 s on 2 busy cores
def test_no_noise_thread_outlives_a_finished_or_failed_run(monkeypatch):
    before = threads_now()
    assert Session(RunConfig(**FAST)).run()["status"] == "finished"
    assert not noise_threads(before)
    real = DPGradient.finish
    calls = []

    def fail_on_step_2(self, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return real(self, **kw)

    monkeypatch.setattr(DPGradient, "finish", fail_on_step_2)
    summary = Session(RunConfig(**FAST)).run()
    assert summary["status"] == "failed" and "boom" in summary["reason"]
    assert not noise_threads(before)


def test_close_waits_for_the_step_made_ahead_and_a_source_can_go_on_after_it():
    before = threads_now()
    source = RunRandomness.seeded(1).noise(threads=2)
    first = source.draw_step([2 * CHUNK]).copy()
    source.close()
    assert not noise_threads(before)
    again = RunRandomness.seeded(1).noise(threads=1)
    again.restore(source.state())  # a checkpoint: continue after step 1
    np.testing.assert_array_equal(again.draw_step([10]), source.draw_step([10]))
    assert not np.array_equal(first[:10], again.draw_step([10]))
    source.close()
    again.close()
    assert not noise_threads(before)


def test_the_drawing_thread_makes_what_the_background_has_not(monkeypatch):
    """A background thread starved of CPU (or of the GIL, by a Python-bound step) never makes the step wait for it:
    the drawing thread takes the chunks not yet taken. Here the background takes none."""
    key = RunRandomness.seeded(6)._derive(b"gaussian-noise-v2")
    with KeystreamNoise(key, threads=1, prefetch=False) as plain:
        want = [plain.draw_step([2 * CHUNK + 1]).copy() for _ in range(2)]
    monkeypatch.setattr(KeystreamNoise, "_work", lambda self, job: None)
    with KeystreamNoise(key, threads=2) as idle_background:
        got = [idle_background.draw_step([2 * CHUNK + 1]).copy() for _ in range(2)]
    for a, b in zip(want, got):
        assert a.tobytes() == b.tobytes()
