"""Step time and memory of DP-LoRA against non-private LoRA and Opacus, in one process.

    python benchmarks/overhead.py [--model default|tiny] [--batch-size B] [--seq-len T] [--steps N] [--json]

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

import torch  # noqa: E402

from workbench.engine.data import collate, tokenize_dataset  # noqa: E402
from workbench.engine.data.demo import demo_dataset  # noqa: E402
from workbench.engine.models import attach_lora, load_model  # noqa: E402
from workbench.engine.randomness import RunRandomness  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from gpu_check import SIGMA, C, NonPrivate, Opacus, Workbench  # noqa: E402 (the three methods, defined once)

LR = 1e-3


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
    """Seconds per step of the noise alone, for every LoRA parameter of the model: the secret path
    (ChaCha20 stream, float64, one discarded draw then four draws / 2, as DPGradient draws it) against
    the old fp32 torch.normal from a seeded generator."""
    shapes = [p.shape for p in method.params]
    device = method.params[0].device
    secure, plain = RunRandomness.secret().noise(), torch.Generator(device=device).manual_seed(0)
    t_secure, t_plain = [], []
    for _ in range(max(3, rounds)):
        t0 = time.perf_counter()
        for shape in shapes:
            secure.sample(shape, SIGMA * C, device=device)
        t_secure.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        for shape in shapes:
            torch.normal(0.0, SIGMA * C, size=shape, generator=plain, device=device)
        t_plain.append(time.perf_counter() - t0)
    return {
        "noise_coordinates": sum(math.prod(s) for s in shapes),
        "noise_seconds_per_step": statistics.median(t_secure),
        "fp32_torch_normal_seconds_per_step": statistics.median(t_plain),
    }


def run(args) -> dict:
    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    base, tok, _ = load_model(args.model, task="causal_lm", device=device)
    batch = make_batch(tok, args.batch_size, args.seq_len, device)
    methods = []
    for cls in (NonPrivate, Workbench, Opacus):
        model = attach_lora(copy.deepcopy(base), task="causal_lm", r=8, alpha=16, dropout=0.0, target_modules="auto")
        try:
            methods.append(cls(model, batch, device, lr=LR, bf16=False))  # bf16=False: as loaded, no autocast
        except Exception as err:  # report, don't hide: e.g. an Opacus/peft incompatibility
            print(f"{cls.name}: could not set up ({type(err).__name__}: {err})", file=sys.stderr)
    del base
    times: dict[str, list[float]] = {m.name: [] for m in methods}
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
    med = {k: statistics.median(v) for k, v in times.items()}
    noise = noise_cost(next(m for m in methods if m.name == "workbench"), rounds=args.steps)
    out = {
        "model": args.model,
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
    out["noise_share_of_dp_step"] = noise["noise_seconds_per_step"] / med["workbench"]
    if "opacus" in med:
        out["dp_over_opacus"] = med["workbench"] / med["opacus"]
        out["memory_dp_over_opacus"] = memory["workbench"] / max(1, memory["opacus"])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default", help="default | tiny | a path or hub id")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--steps", type=int, default=5, help="timed rounds (one step of each method per round)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--cpu", action="store_true", help="stay on the CPU even where CUDA is present")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
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
        f"  noise ({out['noise_coordinates']:,} coordinates): {out['noise_seconds_per_step'] * 1e3:.1f} ms/step secure "
        f"(fp32 torch.normal {out['fp32_torch_normal_seconds_per_step'] * 1e3:.1f} ms), "
        f"{out['noise_share_of_dp_step']:.2%} of the DP step"
    )


if __name__ == "__main__":
    main()
