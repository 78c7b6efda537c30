"""Federated DP-LoRA against centralised DP-LoRA: the demo inbox split by patient into 10 clinics.

    python benchmarks/federated.py [--model default] [--rounds 24] [--clients-per-round 5] [--epsilon 8] [--json]
    python benchmarks/federated.py --fast   # the tiny model, 3 clients, 2 rounds: checks the script in a minute

Arms, each one stored run (Flower's simulation engine, Ray, for the federated ones), all from assets/demo.yaml:
  federated_dp       client-level DP-FedAvg at epsilon --epsilon, --partition by-user over --clients clinics
  federated_nonpriv  the same federation without noise or clipping
  central_dp         the centralised DP run of the same config (workbench train) at the same epsilon
  dirichlet_dp       federated_dp with the Dirichlet(--alpha) label split (heterogeneous clinics)
``--json`` prints one object: for each arm its held-out routing accuracy, epsilon (and what it protects: a clinic
for the federated arms, a message for the centralised one), wall time, and for federated arms the bytes sent to
the sampled clients per round (the LoRA adapter times the clients sampled).
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore")

from workbench.config import RunConfig  # noqa: E402
from workbench.events import jsonable  # noqa: E402
from workbench.federated.run import federate  # noqa: E402
from workbench.session import Session  # noqa: E402
from workbench.store.runs import RunStore  # noqa: E402

HERE = Path(__file__).resolve().parent


def base_config(args) -> RunConfig:
    cfg = RunConfig.from_file(HERE.parent / "assets" / "demo.yaml").with_overrides(
        {"target_epsilon": args.epsilon, "eval_every": 10**6, "generate_max_new_tokens": 0}
    )
    if args.client_batch:  # a clinic holds about 100 training messages: the demo's batch of 64 is most of one
        cfg = cfg.with_overrides({"batch_size": args.client_batch})
    if args.fast:
        cfg = cfg.with_overrides(
            {"model": "tiny", "batch_size": 4, "physical_batch_size": 8, "max_steps": 2, "eval_max_examples": 16}
        )
    elif args.model:
        cfg = cfg.with_overrides({"model": args.model})
    return cfg


def federated_arm(cfg: RunConfig, args, *, partition: str, private: bool, store: RunStore) -> dict:
    if not private:
        cfg = cfg.with_overrides({"noise_multiplier": 0, "target_epsilon": None, "max_grad_norm": None})
    t0 = time.time()
    s = federate(
        cfg,
        clients=args.clients,
        rounds=args.rounds,
        clients_per_round=args.clients_per_round,
        partition=partition,
        local_steps=args.local_steps,
        store=store,
        name=f"bench-federated-{partition}-{'dp' if private else 'nonprivate'}",
    )
    return {
        "status": s["status"],
        "accuracy": s.get("accuracy"),
        "epsilon": s["epsilon"],
        "protects": "a clinic (client level)" if private else "nothing (non-private)",
        "noise_multiplier": s.get("noise_multiplier"),
        "bytes_per_round": s["bytes_per_round"],
        "seconds": time.time() - t0,
        "rounds": s["steps"],
    }


def central_arm(cfg: RunConfig, store: RunStore, batch: int | None) -> dict:
    t0 = time.time()
    if batch is not None:  # the centralised run keeps the demo's own batch size (assets/demo.yaml)
        cfg = cfg.with_overrides({"batch_size": batch})
    summary = Session(cfg, store=store, name="bench-federated-central-dp").run()
    return {
        "status": summary["status"],
        "accuracy": summary.get("accuracy"),
        "epsilon": summary.get("epsilon"),
        "protects": "one message (example level)",
        "seconds": time.time() - t0,
        "steps": summary.get("steps"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=24)
    ap.add_argument("--clients-per-round", type=int, default=5)
    ap.add_argument("--local-steps", type=int, default=1)
    ap.add_argument("--epsilon", type=float, default=8.0)
    ap.add_argument("--alpha", type=float, default=0.3)
    ap.add_argument("--client-batch", type=int, default=16, help="the federated arms' batch size (per client)")
    ap.add_argument("--arms", default="federated_dp,federated_nonpriv,central_dp,dirichlet_dp")
    ap.add_argument("--fast", action="store_true", help="tiny model, 3 clients, 2 rounds: the script runs")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if args.fast:
        args.clients, args.rounds, args.clients_per_round, args.client_batch = 3, 2, 2, None
    cfg = base_config(args)
    store = RunStore()
    arms = {
        "federated_dp": lambda: federated_arm(cfg, args, partition="by-user", private=True, store=store),
        "federated_nonpriv": lambda: federated_arm(cfg, args, partition="by-user", private=False, store=store),
        "central_dp": lambda: central_arm(cfg, store, None if args.fast else 64),
        "dirichlet_dp": lambda: federated_arm(
            cfg, args, partition=f"dirichlet:{args.alpha:g}", private=True, store=store
        ),
    }
    out = {
        "settings": {
            "model": cfg.model,
            "clients": args.clients,
            "rounds": args.rounds,
            "clients_per_round": args.clients_per_round,
            "local_steps": args.local_steps,
            "epsilon": args.epsilon,
            "central_steps": cfg.max_steps,
        }
    }
    for name in args.arms.split(","):
        out[name] = arms[name]()
        if not args.json:
            print(name, json.dumps(jsonable(out[name])), flush=True)
    if args.json:
        print(json.dumps(jsonable(out), indent=2))  # epsilon inf as "inf" (JSON has no infinity)


if __name__ == "__main__":
    main()
