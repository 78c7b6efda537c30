"""Does the black-box audit see what the accountant claims?  Input canaries and secret exposure on the demo.

    python benchmarks/audit.py [--model default] [--steps 18] [--batch-size 24] [--canaries 200]
                               [--candidates 1000] [--arms eps1 eps4 eps8 nonprivate] [--home DIR]

One run per arm with the settings of assets/demo.yaml (the clinic inbox, the default model), with
audit=input_canaries: m secret canary examples, each included with probability 1/2, scored by how much
training lowered the adapter's loss on them (audit/input_canaries.py), give an empirical lower bound on
epsilon (privacy/audit.py); the demo's five planted member numbers give their exposure among |R| random
candidates of the same format (audit/exposure.py). Arms: target epsilon 1, 4 and 8, and no noise
(noise_multiplier 0, clipping on: the claim is infinite).

The lower bound of a DP arm must stay below its claimed epsilon. A short CPU run sees each included canary
about T q times (here well under once), so the bound measures what such a run leaks, far below what the
worst case (the claim) allows; this is expected, not a failure of the audit.

Prints one JSON object on stdout and a Markdown table on stderr (also in the JSON, "table").
Sized for 2 CPU cores: about 4 minutes per arm with the default model (canary scoring 2 m forward
passes, exposure 5 |R| short continuations, the training steps, one evaluation).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore")

import yaml  # noqa: E402

from workbench.audit import exposure  # noqa: E402
from workbench.config import RunConfig, flatten  # noqa: E402
from workbench.session import Session  # noqa: E402
from workbench.store.runs import RunStore  # noqa: E402

HERE = Path(__file__).resolve().parent
ARMS = {
    "eps1": dict(target_epsilon=1.0),
    "eps4": dict(target_epsilon=4.0),
    "eps8": dict(target_epsilon=8.0),
    "nonprivate": dict(target_epsilon=None, noise_multiplier=0.0),  # clipping stays on (demo.yaml's C)
}


def settings(args) -> dict:
    cfg = flatten(yaml.safe_load((HERE.parent / "assets" / "demo.yaml").read_text()))  # grouped -> flat keys
    cfg.pop("target_epsilon", None)
    cfg.pop("response_max_tokens", None)  # the planted secrets are in the reply after the answer line: keep it
    cfg.update(
        model=args.model,
        max_steps=args.steps,
        batch_size=args.batch_size,
        eval_every=args.steps,
        eval_max_examples=args.eval_examples,
        generate_max_new_tokens=0,
        audit="input_canaries",
        audit_canaries=args.canaries,
        seed=args.seed,
        name=None,
    )
    return cfg


def run_arm(name: str, base: dict, store: RunStore) -> dict:
    s = Session(RunConfig(**{**base, **ARMS[name]}), store=store, name=f"audit benchmark {name}").run()
    if s.get("status") != "finished":
        raise SystemExit(f"{name} run failed: {s.get('reason')}")
    audit = s["audit"]
    return {
        "run_id": s["run_id"],
        "claimed_epsilon": s["epsilon"],
        "noise_multiplier": s["noise_multiplier"],
        "sample_rate": s["sample_rate"],
        "steps": s["steps"],
        "lower_bound": audit["epsilon_lower_bound"],
        "canaries": audit["canaries"],
        "guesses": audit["guesses"],
        "correct": audit["correct"],
        "exposures": [
            {k: e[k] for k in ("user_id", "exposure", "rank", "in_training")} for e in audit.get("exposure", [])
        ],
        "candidates": (audit.get("exposure") or [{}])[0].get("candidates"),
        "val_loss": s.get("val_loss"),
        "accuracy": s.get("accuracy"),
        "wall_time": s["wall_time"],
    }


def table(arms: dict) -> str:
    rows = [
        "| arm | claimed epsilon | lower bound | canaries | guesses | correct | exposures (bits) | seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in arms.items():
        claimed = "inf" if math.isinf(r["claimed_epsilon"]) else f"{r['claimed_epsilon']:.3g}"
        expo = ", ".join(f"{e['exposure']:.2f}" + ("" if e["in_training"] else "*") for e in r["exposures"]) or "-"
        rows.append(
            f"| {name} | {claimed} | {r['lower_bound']:.3g} | {r['canaries']} | {r['guesses']} | "
            f"{r['correct']} | {expo} | {r['wall_time']:.0f} |"
        )
    return "\n".join(rows)


def _finite(x):
    """inf -> "inf" (strict JSON has no Infinity)."""
    if isinstance(x, float) and math.isinf(x):
        return "inf"
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_finite(v) for v in x]
    return x


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--steps", type=int, default=18)
    ap.add_argument("--batch-size", type=int, default=24)
    ap.add_argument("--canaries", type=int, default=200, help="m, the input canaries per run")
    ap.add_argument("--candidates", type=int, default=exposure.CANDIDATES, help="|R|, the exposure's random candidates")
    ap.add_argument("--eval-examples", type=int, default=16)
    ap.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--home", help="a WORKBENCH_HOME for the runs (default: a temporary folder)")
    args = ap.parse_args()
    exposure.CANDIDATES = args.candidates
    base = settings(args)
    home = args.home or tempfile.mkdtemp(prefix="audit-bench-")
    store = RunStore(home)
    out: dict = {"settings": base, "candidates": args.candidates, "arms": {}}
    t0 = time.time()
    for name in args.arms:
        t = time.time()
        out["arms"][name] = run_arm(name, base, store)
        print(f"{name}: {json.dumps(out['arms'][name])} ({time.time() - t:.0f} s)", file=sys.stderr, flush=True)
    out["seconds"] = time.time() - t0
    out["table"] = table(out["arms"])
    print(json.dumps(_finite(out), indent=2, default=str))
    print(out["table"] + "\n(* = the secret's example was not trained on: a control)", file=sys.stderr)


if __name__ == "__main__":
    main()
