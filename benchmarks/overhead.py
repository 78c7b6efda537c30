"""Step time and memory of DP-LoRA against non-private LoRA and Opacus, in one process.

    python benchmarks/overhead.py [--model default|tiny] [--lora auto-r8|all-linear-r16] [--batch-size B]
                                  [--seq-len T] [--steps N] [--json]
    python benchmarks/overhead.py --noise-only [--coordinates N]     # the noise's throughput per core, sources 1-3,
                                                                     # where sources 2 and 3 spend it, alternatives

``--lora``: the adapter: ``auto-r8`` (peft's default targets, r = 8, 460,800 coordinates on the default model) or
``all-linear-r16`` (every linear layer, r = 16, about 4.9 million: issue 29's configuration, where the noise weighs).
The noise's share of the DP step is printed twice: what the step waited for it (``noise_wait``: the next step's noise
is made on a background thread while the current one runs, engine/noise.py) and what making it costs on one thread
(``noise_make``), each over the median DP step. ``--noise-only`` times the secret noise alone on one core (CPU time,
torch and the source on one thread): source 1 (randomgen ChaCha20 + numpy, synchronous) against source 2 (OpenSSL
ChaCha20 keystream + polar method in numpy passes) and source 3 (the same keystream, then one compiled numba loop;
its compilation or cache load is timed apart, before the rounds), coordinates per CPU second and their ratios to
source 1, measured interleaved in one run; then source 3's split (keystream, compiled loop) and where source 2's CPU
time goes, stage by stage (the same numpy calls as engine/noise.py, checked bit for bit against it),
and the alternatives issue 29 asked to measure: AES-CTR keystreams and numpy's ziggurat over randomgen's AESCounter.

The three methods train the same LoRA model (fresh copies), on the same batch of demo-data
examples (fixed size B, truncated to T tokens), with AdamW (the classes of benchmarks/gpu_check.py, here at lr 1e-3
and without autocast):
  nonprivate  ordinary autograd on the mean loss;
  workbench   this engine's DP step: per-example grads (hooks), clip, noise, average;
  opacus      Opacus' PrivacyEngine (GradSampleModule + DPOptimizer), same C and sigma.
Steps are interleaved (one of each per round) so machine noise hits all three alike; the median
is reported.  Memory: on CUDA, peak allocated bytes during each method's steps; on the CPU, the
peak resident-set growth above the level before that method's steps (sampled every 2 ms; the
allocator may reuse memory a previous method freed, so CPU memory figures are rough).
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import math
import os
import statistics
import sys
import threading
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes  # noqa: E402
from randomgen import AESCounter  # noqa: E402

from workbench.engine import noise as noise_mod  # noqa: E402
from workbench.engine.data import collate, tokenize_dataset  # noqa: E402
from workbench.engine.data.demo import demo_dataset  # noqa: E402
from workbench.engine.models import attach_lora, load_model  # noqa: E402
from workbench.engine.randomness import RunRandomness  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from gpu_check import SIGMA, C, NonPrivate, Opacus, Workbench  # noqa: E402 (the three methods, defined once)

LR = 1e-3
LORA = {"auto-r8": (8, "auto"), "all-linear-r16": (16, "all-linear")}  # --lora: (r, target modules)


class PeakRSS:
    """Peak resident memory growth while inside the block (CPU), sampled by a thread."""

    def __init__(self) -> None:
        self.peak = 0

    @staticmethod
    def rss() -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self):
        gc.collect()
        self.base = self.rss()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._watch, daemon=True)
        self._t.start()
        return self

    def _watch(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss() - self.base)
            time.sleep(0.002)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()


def make_batch(tokenizer, batch_size: int, seq_len: int, device) -> dict[str, torch.Tensor]:
    examples = tokenize_dataset(demo_dataset(), tokenizer, max_seq_len=seq_len)[:batch_size]
    return {k: v.to(device) for k, v in collate(examples, pad_id=tokenizer.pad_token_id).items()}


def noise_cost(method: "Workbench", *, rounds: int) -> dict:
    """Seconds per step of the noise alone, for every LoRA parameter of the model, made on the calling thread: the
    secret source as DPGradient draws it (a new run's source, one thread, nothing ahead), source 1 (what ran before issue 29)
    and fp32 torch.normal from a seeded generator (not secret; for scale)."""
    shapes = [p.shape for p in method.params]
    sizes = [math.prod(s) for s in shapes]
    device = method.params[0].device
    secret = RunRandomness.secret()
    new = secret.noise(threads=1)
    old = RunRandomness(secret.key, noise_version=1).noise()
    plain = torch.Generator(device=device).manual_seed(0)
    t_new, t_old, t_plain = [], [], []
    for _ in range(max(3, rounds)):
        t0 = time.perf_counter()
        torch.from_numpy(new.draw_step(sizes, ahead=False)).to(device)
        t_new.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        old.draw_step(sizes)
        t_old.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        for shape in shapes:
            torch.normal(0.0, SIGMA * C, size=shape, generator=plain, device=device)
        t_plain.append(time.perf_counter() - t0)
    new.close()
    return {
        "noise_coordinates": sum(sizes),
        "noise_make_seconds_per_step": statistics.median(t_new),
        "noise_source_1_seconds_per_step": statistics.median(t_old),
        "fp32_torch_normal_seconds_per_step": statistics.median(t_plain),
    }


def noise_throughput(coordinates: int, *, rounds: int) -> dict:
    """Coordinates per CPU second of each source on one core (torch on one thread, the source on one thread, nothing
    made ahead), interleaved rounds, best of each: CPU time, so other processes on the machine count less."""
    torch.set_num_threads(1)
    secret = RunRandomness.secret()
    sources = {
        f"source_{v}": RunRandomness(secret.key, noise_version=v).noise(threads=1)
        for v in sorted(noise_mod.NOISE_SOURCES)
    }
    t0 = time.perf_counter()  # source 3's first chunk: numba compiles its loop, or loads it from numba's cache
    noise_mod.fill_chunk(secret.key, 1, 0, np.empty(noise_mod.CHUNK), version=3)
    first_chunk = time.perf_counter() - t0
    best = {k: math.inf for k in sources}
    for _ in range(rounds):
        for name, src in sources.items():
            t0 = time.process_time()
            src.draw_step([coordinates], ahead=False)
            best[name] = min(best[name], time.process_time() - t0)
    for src in sources.values():
        src.close()
    per_s = {k: coordinates / v for k, v in best.items()}
    return {
        "coordinates": coordinates,
        "coordinates_per_cpu_second": per_s,
        "over_source_1": {k: v / per_s["source_1"] for k, v in per_s.items() if k != "source_1"},
        "new_over_old": per_s[f"source_{noise_mod.NOISE_VERSION}"] / per_s["source_1"],
        "source_3_first_chunk_seconds": first_chunk,
        "load_average": os.getloadavg(),
        "cpus": os.cpu_count(),
    }


def _stages(key: bytes, step: int, chunk: int, ws, out: np.ndarray, clock: dict) -> None:
    """engine/noise.py's fill_chunk for one chunk, the same numpy calls in the same order, each stage timed."""
    t = time.process_time()

    def lap(name: str) -> None:
        nonlocal t
        now = time.process_time()
        clock[name] = clock.get(name, 0.0) + now - t
        t = now

    cand, pairs, n = noise_mod._CANDIDATES, noise_mod._PAIRS, noise_mod.CHUNK
    ck = noise_mod.chunk_key(key, step, chunk)
    encryptor = Cipher(algorithms.ChaCha20(ck, noise_mod._NONCE), mode=None).encryptor()
    lap("chunk key (HMAC) + cipher set-up")
    encryptor.update_into(noise_mod._ZEROS, ws.bytes)
    lap("keystream (ChaCha20, OpenSSL)")
    np.right_shift(ws.words, 11, out=ws.words)
    np.multiply(ws.words, 2.0**-52, out=ws.x)
    ws.x += 2.0**-53
    lap("words -> uniforms on (-1, 1)")
    u, v, s = ws.x[:cand], ws.x[cand:], ws.s
    np.multiply(u, u, out=s)
    np.multiply(v, v, out=ws.t)
    s += ws.t
    lap("s = u^2 + v^2")
    outside = np.flatnonzero(s[:pairs] >= 1.0)
    inside = pairs + np.flatnonzero(s[pairs:] < 1.0)[: len(outside)]
    assert len(inside) == len(outside)  # the ~1e-32 case that needs more keystream is noise.py's, not timed here
    for a in (u, v, s):
        a[outside] = a[inside]
    lap("accept/reject (replace the ~21 % outside the disc)")
    u, v, s = u[:pairs], v[:pairs], s[:pairs]
    f = np.log(s, out=ws.t[:pairs])
    lap("log")
    f *= -0.5
    f /= s
    lap("* -0.5, / s")
    np.sqrt(f, out=f)
    lap("sqrt")
    u *= f
    v *= f
    lap("u f, v f")
    np.add(u[:n], u[n:], out=out)
    tail = v[:n] + v[n:]
    out[:-1] += tail[1:]
    out[-1] += tail[0]
    lap("sum of four")


def _best_per(fn, count: int, rounds: int) -> float:
    """Best CPU seconds of ``fn()`` over ``rounds``, per unit of ``count``."""
    best = math.inf
    for _ in range(rounds):
        t0 = time.process_time()
        fn()
        best = min(best, time.process_time() - t0)
    return best / count


def source_3_split(*, chunks: int = 32, rounds: int = 5) -> dict:
    """Source 3's CPU time per value on one core: chunk key and keystream (OpenSSL), then the compiled loop."""
    key = RunRandomness.secret()._derive(b"gaussian-noise-v3")
    ws, out = noise_mod._Workspace(), np.empty(noise_mod.CHUNK)
    clock = {"chunk key + keystream (ChaCha20, OpenSSL)": 0.0, "compiled loop (words -> values, numba)": 0.0}
    for r in range(rounds):
        for c in range(chunks):
            t0 = time.process_time()
            noise_mod._encryptor(key, r + 1, c, 3).update_into(noise_mod._ZEROS, ws.bytes)
            t1 = time.process_time()
            assert noise_mod._fused_chunk(ws.words, out, ws.s, ws.f, ws.idx)
            t2 = time.process_time()
            clock["chunk key + keystream (ChaCha20, OpenSSL)"] += t1 - t0
            clock["compiled loop (words -> values, numba)"] += t2 - t1
    want = np.empty(noise_mod.CHUNK)
    noise_mod.numpy_chunk(key, rounds, chunks - 1, want, noise_mod._Workspace(), version=3)
    assert want.tobytes() == out.tobytes(), "the compiled loop no longer gives the numpy reference's bits"
    values = rounds * chunks * noise_mod.CHUNK
    return {k: v / values * 1e9 for k, v in clock.items()}


def noise_profile(*, chunks: int = 32, rounds: int = 5) -> dict:
    """Where source 2's CPU time goes per value (one core), and the alternatives' costs, in nanoseconds."""
    key = RunRandomness.secret()._derive(b"gaussian-noise-v2")
    ws, want, got = noise_mod._Workspace(), np.empty(noise_mod.CHUNK), np.empty(noise_mod.CHUNK)
    clock: dict[str, float] = {}
    for r in range(rounds):
        for c in range(chunks):
            _stages(key, r + 1, c, ws, got, clock)
    noise_mod.fill_chunk(key, rounds, chunks - 1, want)
    assert want.tobytes() == got.tobytes(), "the profile no longer follows engine/noise.py"
    values = rounds * chunks * noise_mod.CHUNK
    stages = {k: v / values * 1e9 for k, v in clock.items()}
    words = 1 << 16  # keystream speeds on a 512 KiB buffer, set-up included
    plain, buf = memoryview(bytes(8 * words)), bytearray(8 * words)
    ciphers = {
        "ChaCha20": lambda: Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None),
        "AES-256-CTR": lambda: Cipher(algorithms.AES(key), modes.CTR(bytes(16))),
        "AES-128-CTR": lambda: Cipher(algorithms.AES(key[:16]), modes.CTR(bytes(16))),
    }
    keystream = {
        k: _best_per(lambda c=c: c().encryptor().update_into(plain, buf), words, 20) * 1e9 for k, c in ciphers.items()
    }
    zig, normals = np.random.Generator(AESCounter(key=int.from_bytes(key[:16], "little"))), np.empty(words)
    ziggurat = _best_per(lambda: zig.standard_normal(out=normals), words, 20) * 1e9
    return {
        "ns_per_value_by_stage": stages,
        "ns_per_value": sum(stages.values()),
        "keystream_ns_per_64_bit_word": keystream,
        "keystream_words_per_value": 4 * noise_mod._CANDIDATES / noise_mod._PAIRS,
        "numpy_ziggurat_over_randomgen_AESCounter_ns_per_draw": ziggurat,
    }


def run(args) -> dict:
    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    base, tok, _ = load_model(args.model, task="causal_lm", device=device)
    batch = make_batch(tok, args.batch_size, args.seq_len, device)
    methods = []
    r, targets = LORA[args.lora]
    for cls in (NonPrivate, Workbench, Opacus):
        model = attach_lora(
            copy.deepcopy(base), task="causal_lm", r=r, alpha=2 * r, dropout=0.0, target_modules=targets
        )
        try:
            methods.append(cls(model, batch, device, lr=LR, bf16=False))  # bf16=False: as loaded, no autocast
        except Exception as err:  # report, don't hide: e.g. an Opacus/peft incompatibility
            print(f"{cls.name}: could not set up ({type(err).__name__}: {err})", file=sys.stderr)
    del base
    times: dict[str, list[float]] = {m.name: [] for m in methods}
    waits: list[float] = []  # what each timed DP step waited for its noise (made ahead on a thread)
    memory: dict[str, int] = {}
    for m in methods:  # warm-up and memory, one method at a time
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            for _ in range(args.warmup):
                m.step()
            torch.cuda.synchronize()
            memory[m.name] = torch.cuda.max_memory_allocated() - before
        else:
            with PeakRSS() as peak:
                for _ in range(args.warmup):
                    m.step()
            memory[m.name] = peak.peak
    for _ in range(args.steps):  # interleaved timing rounds
        for m in methods:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            m.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[m.name].append(time.perf_counter() - t0)
            if m.name == "workbench":
                waits.append(m.dp.noise.wait_seconds)
    med = {k: statistics.median(v) for k, v in times.items()}
    workbench = next(m for m in methods if m.name == "workbench")
    workbench.dp.close()
    noise = noise_cost(workbench, rounds=args.steps)
    out = {
        "model": args.model,
        "lora": args.lora,
        "device": str(device),
        "batch_size": int(batch["input_ids"].shape[0]),
        "seq_len": int(batch["input_ids"].shape[1]),
        "steps": args.steps,
        "threads": torch.get_num_threads(),
        "median_step_seconds": med,
        "peak_memory_bytes": memory,
        "dp_over_nonprivate": med["workbench"] / med["nonprivate"],
        "memory_dp_over_nonprivate": memory["workbench"] / max(1, memory["nonprivate"]),
    }
    out.update(noise)
    out["noise_wait_seconds_per_step"] = statistics.median(waits)
    out["noise_share_of_dp_step"] = out["noise_wait_seconds_per_step"] / med["workbench"]  # what the step waited
    out["noise_make_share_of_dp_step"] = noise["noise_make_seconds_per_step"] / med["workbench"]  # one thread's work
    out["load_average"] = os.getloadavg()
    if "opacus" in med:
        out["dp_over_opacus"] = med["workbench"] / med["opacus"]
        out["memory_dp_over_opacus"] = memory["workbench"] / max(1, memory["opacus"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default", help="default | tiny | a path or hub id")
    ap.add_argument("--lora", default="auto-r8", choices=sorted(LORA), help="the adapter (see the docstring)")
    ap.add_argument("--noise-only", action="store_true", help="only the noise's throughput per core, old vs new")
    ap.add_argument("--coordinates", type=int, default=2_000_000, help="--noise-only: values per draw")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--steps", type=int, default=5, help="timed rounds (one step of each method per round)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--cpu", action="store_true", help="stay on the CPU even where CUDA is present")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.noise_only:
        out = noise_throughput(args.coordinates, rounds=max(3, args.steps))
        out["source_3_ns_per_value"] = split = source_3_split()
        out["source_2_profile"] = prof = noise_profile()
        if args.json:
            print(json.dumps(out, indent=2))
            return
        per_s = out["coordinates_per_cpu_second"]
        print(
            f"secret noise, one core, {out['coordinates']:,} values a draw (load average {out['load_average'][0]:.1f}"
            f" on {out['cpus']} CPUs):"
        )
        for k, v in per_s.items():
            print(f"  {k}  {v / 1e6:7.1f} M values per CPU second")
        for k, v in out["over_source_1"].items():
            print(f"  {k} over source_1: {v:.2f}x")
        print(
            f"  source 3's first chunk (numba compiles its loop or loads it from its cache): "
            f"{out['source_3_first_chunk_seconds']:.2f} s wall, not in the figures above"
        )
        print(f"source 3, one core, CPU time ({sum(split.values()):.1f} ns per value in all):")
        for k, v in split.items():
            print(f"  {k:50} {v:5.2f} ns/value")
        print(f"source 2, one core, CPU time by stage ({prof['ns_per_value']:.1f} ns per value in all):")
        for k, v in prof["ns_per_value_by_stage"].items():
            print(f"  {k:50} {v:5.2f} ns/value {v / prof['ns_per_value']:6.1%}")
        ks = ", ".join(f"{k} {v:.2f}" for k, v in prof["keystream_ns_per_64_bit_word"].items())
        print(
            f"alternatives: keystream ns per 64-bit word: {ks} ({prof['keystream_words_per_value']:.2f} words a value)"
        )
        print(
            "  numpy's ziggurat over randomgen's AESCounter: "
            f"{prof['numpy_ziggurat_over_randomgen_AESCounter_ns_per_draw']:.1f} ns a draw (four draws a value; "
            f"source 2: {prof['ns_per_value'] / 4:.1f} ns a draw)"
        )
        return
    out = run(args)
    if args.json:
        print(json.dumps(out, indent=2))
        return
    med, mem = out["median_step_seconds"], out["peak_memory_bytes"]
    print(
        f"{out['model']} on {out['device']}: batch {out['batch_size']} x {out['seq_len']} tokens, {out['steps']} rounds"
    )
    for k in med:
        print(f"  {k:11} {med[k]:8.3f} s/step   peak memory +{mem[k] / 2**20:8.1f} MiB")
    print(f"  dp_over_nonprivate        {out['dp_over_nonprivate']:.3f}")
    if "dp_over_opacus" in out:
        print(f"  dp_over_opacus            {out['dp_over_opacus']:.3f}")
    print(f"  memory_dp_over_nonprivate {out['memory_dp_over_nonprivate']:.3f}")
    print(
        f"  noise ({out['noise_coordinates']:,} coordinates): the step waited {out['noise_wait_seconds_per_step'] * 1e3:.1f}"
        f" ms ({out['noise_share_of_dp_step']:.2%} of the DP step); making it takes "
        f"{out['noise_make_seconds_per_step'] * 1e3:.1f} ms on one thread ({out['noise_make_share_of_dp_step']:.2%}; "
        f"source 1 {out['noise_source_1_seconds_per_step'] * 1e3:.1f} ms, "
        f"fp32 torch.normal {out['fp32_torch_normal_seconds_per_step'] * 1e3:.1f} ms)"
    )
    print(f"  load average {out['load_average'][0]:.1f} on {os.cpu_count()} CPUs")


if __name__ == "__main__":
    main()
