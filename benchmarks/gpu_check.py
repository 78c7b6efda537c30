"""The GPU check: the GPU-marked tests, then tokens/s and peak memory of non-private LoRA, this engine's DP step and
Opacus on a ~1B Llama-style model, at physical batches 8, 32 and 128; plus 2-GPU data-parallel DP-SGD.

    python benchmarks/gpu_check.py [--out DIR] [--batches 8,32,128] [--seq-len 512] [--steps 5]
    python benchmarks/gpu_check.py --device cpu --tiny          # the same path end to end in seconds (CI)

No network is needed: the model is built from a config with random weights (speed does not depend on the weights),
the batch is random tokens, and Python packages the machine lacks are installed from the wheels in
``benchmarks/wheels/`` (``--wheels``) when that folder exists. One JSON file goes to ``--out``; the ratios the
issue sets as goals are printed at the end:

    DP step / non-private LoRA step  <= 1.10   (time per step at physical batch 32)
    DP step / Opacus step            <= 0.80
    DP peak memory / non-private     <= 1.20

The model: Llama-style, hidden 2048, 22 layers, 32 heads (4 KV heads), MLP 5632, vocabulary 32000 (TinyLlama-1.1B's
shape, 1.1 B parameters), frozen backbone in bf16, LoRA r=16 on every linear layer (peft "all-linear") in fp32, run
under bf16 autocast. The three methods train fresh copies on the same batch with AdamW (benchmarks/overhead.py runs
these three classes on the real default model). Peak memory is CUDA's peak allocated bytes above the model's own (on
the CPU it is not measured). ``--tiny``: hidden 64, 2 layers, vocabulary 512, sequence 32, batches 2 and 4.
"""

from __future__ import annotations

import argparse
import copy
import gc
import importlib.util
import json
import math
import multiprocessing
import os
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore")

ROOT = Path(__file__).resolve().parent.parent
C, SIGMA, LR, RANK_R = 1.0, 1.0, 1e-4, 16
GOALS = {"dp_over_nonprivate": 1.10, "dp_over_opacus": 0.80, "memory_dp_over_nonprivate": 1.20}
# import name -> distribution name, for the wheels carried beside the script
NEEDED = {"torch": "torch", "transformers": "transformers", "peft": "peft", "opacus": "opacus", "scipy": "scipy"}


def ensure_packages(wheels: Path) -> list[str]:
    """Install what is missing from local wheels (no index, no network); returns what was installed."""
    missing = [dist for mod, dist in NEEDED.items() if importlib.util.find_spec(mod) is None]
    if not missing or not wheels.is_dir():
        return []
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--find-links", str(wheels), *missing]
    subprocess.run(cmd, check=True)
    return missing


def run_gpu_tests(device: str) -> dict:
    """pytest -m gpu over the test files that hold GPU-marked tests (skipped without CUDA)."""
    if device != "cuda":
        return {"ran": False, "why": "no CUDA device: the GPU-marked tests need one"}
    files = sorted(str(p) for p in (ROOT / "tests").rglob("test_*.py") if "mark.gpu" in p.read_text())
    if not files:
        return {"ran": False, "why": "no GPU-marked tests found"}
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", *files],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    tail = proc.stdout.strip().splitlines()[-1:] if proc.stdout.strip() else []
    return {"ran": True, "passed": proc.returncode == 0, "summary": tail, "seconds": time.perf_counter() - t0}


# -- the model and the batch ---------------------------------------------------------------------------


def model_config(tiny: bool):
    from transformers import LlamaConfig

    from workbench.engine.models import tiny_config

    if tiny:  # the engine's own tiny model (workbench.engine.models), with sequences up to 256
        return tiny_config(vocab_size=512, max_position_embeddings=256)
    return LlamaConfig(  # TinyLlama-1.1B's shape
        vocab_size=32000,
        hidden_size=2048,
        intermediate_size=5632,
        num_hidden_layers=22,
        num_attention_heads=32,
        num_key_value_heads=4,
        max_position_embeddings=2048,
        tie_word_embeddings=False,
    )


def build_base(tiny: bool, device):
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    cfg = model_config(tiny)
    if device.type == "cuda":
        cfg._attn_implementation = "sdpa"
    with torch.device(device):
        model = LlamaForCausalLM(cfg)
    if device.type == "cuda":
        model = model.to(torch.bfloat16)  # the frozen backbone in bf16; LoRA adapters stay fp32 (peft's default)
    model.requires_grad_(False)
    return model


def with_lora(base):
    from workbench.engine.models import attach_lora

    return attach_lora(
        copy.deepcopy(base), task="causal_lm", r=RANK_R, alpha=32, dropout=0.0, target_modules="all-linear"
    )


def make_batch(b: int, seq: int, vocab: int, device, seed: int = 0) -> dict:
    import torch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (b, seq), generator=g)
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device), "labels": ids.to(device)}


def autocast(device, bf16: bool = True):
    import contextlib

    import torch

    return torch.autocast("cuda", dtype=torch.bfloat16) if bf16 and device.type == "cuda" else contextlib.nullcontext()


# -- the three methods (benchmarks/overhead.py runs them too: without autocast, at its own learning rate) --------


class _Method:
    """What the three share: the batch's per-example loss, under bf16 autocast on CUDA unless ``bf16`` is False."""

    def __init__(self, batch, device, bf16: bool) -> None:
        self.batch, self.device, self.bf16 = batch, device, bf16

    def loss(self):
        from workbench.engine.losses import per_example_loss

        with autocast(self.device, self.bf16):
            loss, _ = per_example_loss(self.model, self.batch, task="causal_lm")
        return loss


class NonPrivate(_Method):
    name = "nonprivate"

    def __init__(self, model, batch, device, *, lr: float = LR, bf16: bool = True) -> None:
        import torch

        super().__init__(batch, device, bf16)
        self.model = model
        self.opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)

    def step(self) -> None:
        self.loss().mean().backward()  # Opacus too: its default loss_reduction="mean"
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)


class Workbench(_Method):
    """This engine's DP step: per-example grads (hooks), clip, sum, noise once (float64, secret), / B."""

    name = "workbench"

    def __init__(self, model, batch, device, collective=None, *, lr: float = LR, bf16: bool = True) -> None:
        import torch

        from workbench.engine.dp_step import DPGradient
        from workbench.engine.grad_sample import PerExampleGrads
        from workbench.engine.randomness import RunRandomness

        super().__init__(batch, device, bf16)
        self.model = model
        self.hooks = PerExampleGrads(model)
        self.hooks.enabled = True
        params = self.hooks.trainable_parameters()
        noise = RunRandomness.secret().noise()
        if collective is not None and not collective.is_main:
            from workbench.engine.distributed import WorkerRandomness

            noise = WorkerRandomness().noise()
        self.dp = DPGradient(params, max_grad_norm=C, noise_multiplier=SIGMA, noise=noise, collective=collective)
        self.params = [p for ps in params.values() for _, p in ps]
        self.opt = torch.optim.AdamW(self.params, lr=lr)
        self.expected = float(batch["input_ids"].shape[0]) * (collective.world_size if collective else 1)

    def step(self) -> None:
        self.dp.start()
        self.hooks.reset()
        self.loss().sum().backward()
        self.dp.add_microbatch(self.hooks.grads)
        for p in self.params:
            p.grad = None
        self.dp.finish(expected_batch_size=self.expected)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)


class Opacus(NonPrivate):
    """Opacus' PrivacyEngine (GradSampleModule + DPOptimizer), same C and sigma; NonPrivate's step on its model."""

    name = "opacus"

    def __init__(self, model, batch, device, *, lr: float = LR, bf16: bool = True) -> None:
        import torch
        from opacus import PrivacyEngine
        from torch.utils.data import DataLoader, TensorDataset

        super().__init__(model, batch, device, lr=lr, bf16=bf16)
        b = batch["input_ids"].shape[0]
        loader = DataLoader(TensorDataset(torch.zeros(b * 10, 1)), batch_size=b)
        self.model, self.opt, _ = PrivacyEngine(accountant="rdp").make_private(
            module=model,
            optimizer=self.opt,
            data_loader=loader,
            noise_multiplier=SIGMA,
            max_grad_norm=C,
            poisson_sampling=False,
        )


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(method, *, device, warmup: int, steps: int, tokens: int) -> dict:
    """Median step time, tokens/s and (CUDA) peak memory above what was allocated before the first step."""
    import torch

    if device.type == "cuda":
        _sync(device)
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    for _ in range(warmup):
        method.step()
    times, waits, makes = [], [], []
    noise = getattr(getattr(method, "dp", None), "noise", None)  # the DP step's secret noise (engine/noise.py)
    for _ in range(steps):
        _sync(device)
        t0 = time.perf_counter()
        method.step()
        _sync(device)
        times.append(time.perf_counter() - t0)
        if hasattr(noise, "wait_seconds"):
            waits.append(noise.wait_seconds)
            makes.append(noise.make_seconds)
    med = statistics.median(times)
    out = {"median_step_seconds": med, "tokens_per_second": tokens / med, "steps": steps}
    if waits:  # the noise: made on the CPU a step ahead (background thread), uploaded once per step
        out["noise_wait_seconds"] = statistics.median(waits)  # what the step waited for it
        out["noise_make_seconds"] = statistics.median(makes)  # what making it took, in the background
        out["noise_share_of_dp_step"] = out["noise_wait_seconds"] / med
        method.dp.close()
    if device.type == "cuda":
        out["peak_memory_bytes"] = torch.cuda.max_memory_allocated() - before
    return out


def one_config(cls, base, *, b: int, args, device) -> dict:
    import torch

    batch = make_batch(b, args.seq_len, base.config.vocab_size, device)
    model = method = None
    try:
        model = with_lora(base)
        method = cls(model, batch, device)
        return measure(method, device=device, warmup=args.warmup, steps=args.steps, tokens=b * args.seq_len)
    except torch.cuda.OutOfMemoryError:
        return {"error": "out of memory"}
    except Exception as err:  # noqa: BLE001 - report, do not hide (e.g. an Opacus/peft incompatibility)
        return {"error": f"{type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''}"}
    finally:
        del model, method, batch
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()


# -- 2 ranks, data-parallel -----------------------------------------------------------------------------


def _dp_rank(rank: int, port: int, args: argparse.Namespace, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    import torch

    from workbench.config import RunConfig
    from workbench.engine import distributed

    device_name = "cuda" if args.device == "cuda" else "cpu"
    if device_name == "cpu":
        torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    ctx = distributed.init(RunConfig(model="tiny", device=device_name), rank, 2, rank)
    device = ctx.device
    base = build_base(args.tiny, device)
    b = args.dp_batch
    batch = make_batch(b, args.seq_len, base.config.vocab_size, device, seed=rank)
    method = Workbench(with_lora(base), batch, device, collective=ctx)
    with torch.no_grad():
        ctx.from_main_([p.data for p in method.params])  # the same starting adapter on both ranks
    result = measure(method, device=device, warmup=args.warmup, steps=args.steps, tokens=2 * b * args.seq_len)
    if rank == 0:
        Path(out).write_text(json.dumps(result))
    distributed.shutdown()


def data_parallel(args, single: dict | None) -> dict:
    """The DP step on 2 ranks (one GPU each; gloo on the CPU), per-rank batch ``--dp-batch``, against one rank."""
    import tempfile

    from workbench.running.launch import free_port

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rank0.json"
        ctx = multiprocessing.get_context("spawn")
        port = free_port()
        procs = [ctx.Process(target=_dp_rank, args=(r, port, args, str(out))) for r in range(2)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=600)
            if p.is_alive():
                p.kill()
        if not out.exists():
            return {"error": f"a rank failed (exit codes {[p.exitcode for p in procs]})"}
        result = json.loads(out.read_text())
    result["per_rank_batch"] = args.dp_batch
    if single and "tokens_per_second" in single:
        result["scaling_efficiency"] = result["tokens_per_second"] / (2 * single["tokens_per_second"])
    return result


# -- main ---------------------------------------------------------------------------------------------------


def ratios(results: dict, b: int) -> dict:
    row = results.get(str(b), {})
    out = {}

    def t(name):
        return row.get(name, {}).get("median_step_seconds")

    def m(name):
        return row.get(name, {}).get("peak_memory_bytes")

    if t("workbench") and t("nonprivate"):
        out["dp_over_nonprivate"] = t("workbench") / t("nonprivate")
    if t("workbench") and t("opacus"):
        out["dp_over_opacus"] = t("workbench") / t("opacus")
    if m("workbench") and m("nonprivate"):
        out["memory_dp_over_nonprivate"] = m("workbench") / m("nonprivate")
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    ap.add_argument("--tiny", action="store_true", help="a 2-layer model, short sequences, small batches (CI)")
    ap.add_argument("--out", default=str(ROOT / "artifacts" / "gpu-check"), help="folder for the JSON result")
    ap.add_argument("--batches", default=None, help="physical batches, comma-separated (default 8,32,128; tiny 2,4)")
    ap.add_argument("--seq-len", type=int, default=None, help="tokens per example (default 512; tiny 32)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per method and batch (default 5; tiny 2)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 2; tiny 1)")
    ap.add_argument("--methods", default="nonprivate,workbench,opacus")
    ap.add_argument("--data-parallel", default="auto", choices=("auto", "on", "off"), help="auto: with 2+ GPUs")
    ap.add_argument("--dp-batch", type=int, default=None, help="per-rank physical batch of the 2-rank run (32)")
    ap.add_argument("--skip-tests", action="store_true", help="do not run the GPU-marked tests")
    ap.add_argument("--budget-s", type=float, default=420.0, help="skip what is left after this many seconds")
    ap.add_argument("--wheels", default=str(Path(__file__).resolve().parent / "wheels"))
    args = ap.parse_args(argv)
    started = time.perf_counter()
    installed = ensure_packages(Path(args.wheels))
    import torch

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device is available here (use --device cpu --tiny to check the script)")
    device = torch.device(args.device)
    batches = [int(x) for x in (args.batches or ("2,4" if args.tiny else "8,32,128")).split(",")]
    args.seq_len = args.seq_len or (32 if args.tiny else 512)
    args.steps = args.steps or (2 if args.tiny else 5)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.tiny else 2)
    args.dp_batch = args.dp_batch or (batches[-1] if args.tiny else 32)
    gpus = torch.cuda.device_count() if device.type == "cuda" else 0
    report: dict = {
        "device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
        "gpus": gpus,
        "torch": torch.__version__,
        "tiny": args.tiny,
        "seq_len": args.seq_len,
        "batches": batches,
        "lora_r": RANK_R,
        "installed_from_wheels": installed,
        "goals": GOALS,
        "tests": {"ran": False, "why": "--skip-tests"} if args.skip_tests else run_gpu_tests(args.device),
    }
    base = build_base(args.tiny, device)
    report["parameters"] = sum(p.numel() for p in base.parameters())
    methods = {"nonprivate": NonPrivate, "workbench": Workbench, "opacus": Opacus}
    chosen = [methods[m] for m in args.methods.split(",")]
    results: dict = {}
    for b in batches:
        for cls in chosen:
            if time.perf_counter() - started > args.budget_s:
                results.setdefault(str(b), {})[cls.name] = {"error": "skipped: time budget spent"}
                continue
            results.setdefault(str(b), {})[cls.name] = one_config(cls, base, b=b, args=args, device=device)
            print(f"batch {b:4d} {cls.name:10s} {_row(results[str(b)][cls.name])}", file=sys.stderr)
    report["results"] = results
    report["lora_parameters"] = sum(
        p.numel() for p in with_lora(base).parameters() if p.requires_grad
    )  # counted once, after the runs
    del base
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()  # GPU 0 is rank 0's in the 2-rank run below
    want_dp = args.data_parallel == "on" or (args.data_parallel == "auto" and gpus >= 2)
    if want_dp and time.perf_counter() - started <= args.budget_s:
        single = None
        if str(args.dp_batch) in results:
            single = results[str(args.dp_batch)].get("workbench")
        report["data_parallel_2_ranks"] = data_parallel(args, single)
    elif args.data_parallel != "off":
        report["data_parallel_2_ranks"] = {"ran": False, "why": f"{gpus} GPU(s) here; it needs 2"}
    key = 32 if 32 in batches else batches[len(batches) // 2]
    report["ratios_at_batch"] = key
    report["ratios"] = ratios(results, key)
    report["seconds"] = time.perf_counter() - started
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"gpu_check-{time.strftime('%Y%m%d-%H%M%S')}{'-tiny' if args.tiny else ''}-{args.device}.json"
    path.write_text(json.dumps(report, indent=2))
    report["path"] = str(path)
    _print(report)
    return report


def _row(r: dict) -> str:
    if "error" in r:
        return r["error"]
    mem = r.get("peak_memory_bytes")
    noise = f"  noise waited {r['noise_share_of_dp_step']:.2%} of the step" if "noise_share_of_dp_step" in r else ""
    return (
        f"{r['tokens_per_second']:10.0f} tokens/s"
        + (f"  peak +{mem / 2**30:6.2f} GiB" if mem is not None else "")
        + noise
    )


def _print(report: dict) -> None:
    print(f"gpu check on {report['device']} ({report['parameters'] / 1e6:.1f} M parameters), {report['seconds']:.0f} s")
    tests = report["tests"]
    if tests.get("ran"):
        print("  GPU-marked tests: " + ("passed " if tests["passed"] else "FAILED ") + " ".join(tests["summary"]))
    else:
        print(f"  GPU-marked tests: not run ({tests['why']})")
    for name, value in report["ratios"].items():
        goal = GOALS[name]
        verdict = "meets" if value <= goal else "MISSES"
        print(
            f"  {name:26s} {value:6.3f}  ({verdict} the goal <= {goal:.2f}, physical batch {report['ratios_at_batch']})"
        )
    dp = report.get("data_parallel_2_ranks")
    if dp and "tokens_per_second" in dp:
        eff = dp.get("scaling_efficiency")
        print(
            f"  2 ranks, data-parallel: {dp['tokens_per_second']:.0f} tokens/s"
            + (f" ({eff:.2f} of twice one rank's)" if eff is not None and not math.isnan(eff) else "")
        )
    print(f"  -> {report['path']}")


if __name__ == "__main__":
    main()
