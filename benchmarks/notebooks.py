"""How long a workshop notebook takes, how big it is once executed, and (notebook 04) whether it learned.

    python benchmarks/notebooks.py                           # notebook 04 at its default (full) settings
    python benchmarks/notebooks.py --notebook 03 --json      # another notebook; one JSON object
    python benchmarks/notebooks.py --fast                    # fast mode (WORKBENCH_FAST=1: the tiny model)
    python benchmarks/notebooks.py --demo                    # also `make demo`'s command, timed the same way
    python benchmarks/notebooks.py --notebook none --demo    # `make demo`'s command only

Each notebook runs top to bottom with nbclient (what `jupyter nbconvert --execute` runs) in a fresh
WORKBENCH_HOME, so the untuned baseline is measured, not read from a cache; the model cache
($WORKBENCH_CACHE) is left as it is: the figures are "model cached". Printed: the machine (CPU model, cores
this process may use, load average before the run), the wall time, the executed notebook's size saved as
JupyterLab saves it (no widget state: its default) and as nbconvert saves it by default (with widget state:
each plotly widget carries plotly.js, about 5 MB), and for notebook 04 the routing accuracy of the untuned
model and of the DP adapter, read from the run store (the step-0 and the last evaluation).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def machine() -> dict:
    """The machine the figures were measured on."""
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.processor() or "unknown",
    )
    import torch

    return {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)),
        "torch_threads": torch.get_num_threads(),
        "load_average_before": os.getloadavg()[0],
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def execute(path: Path, *, home: Path, fast: bool, timeout: int) -> dict:
    """Run the notebook in a copy (in ``home``) and save it twice: without and with widget state."""
    import nbclient
    import nbformat

    home.mkdir(parents=True, exist_ok=True)
    env = {"WORKBENCH_HOME": str(home), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env["WORKBENCH_FAST"] = "1" if fast else "0"
    os.environ.update(env)  # the kernel inherits this process's environment
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(
        nb, kernel_name="python3", timeout=timeout, resources={"metadata": {"path": str(home)}}
    )
    start = time.monotonic()
    client.execute()
    seconds = time.monotonic() - start
    with_state = home / f"executed_with_widget_state_{path.name}"
    nbformat.write(nb, with_state)
    nb.metadata.pop("widgets", None)  # what store_widget_state=False (and JupyterLab's save) leaves out
    saved = home / f"executed_{path.name}"
    nbformat.write(nb, saved)
    return {
        "seconds": round(seconds, 1),
        "bytes": saved.stat().st_size,
        "bytes_with_widget_state": with_state.stat().st_size,
        "executed": str(saved),
    }


def accuracies(home: Path, run_name: str) -> dict:
    """Untuned (step 0) and final routing accuracy of the stored run ``run_name``."""
    from workbench.store.runs import RunStore

    store = RunStore(home)
    runs = [r for r in store.list() if r.name == run_name]
    if not runs:
        return {}
    run = runs[0]
    evals = [e for _, e in store.events(run.id, kinds=("eval",))]
    return {
        "run_id": run.id,
        "untuned_accuracy": evals[0].accuracy if evals and evals[0].step == 0 else None,
        "dp_accuracy": evals[-1].accuracy if evals else None,
        "epsilon": run.final_epsilon,
        "steps": (run.summary or {}).get("steps"),
        "train_seconds": (run.summary or {}).get("wall_time"),
    }


def demo(home: Path) -> dict:
    """`make demo`'s command (workbench train --config assets/demo.yaml), timed, in a fresh home."""
    env = {**os.environ, "WORKBENCH_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    cmd = [str(Path(sys.executable).with_name("workbench")), "train", "--config", str(ROOT / "assets/demo.yaml")]
    start = time.monotonic()
    done = subprocess.run([*cmd, "--json"], env=env, capture_output=True, text=True, check=False)
    seconds = time.monotonic() - start
    if done.returncode != 0:
        raise SystemExit(f"make demo's command failed ({done.returncode}): {done.stderr[-2000:]}")
    summary = json.loads(done.stdout)  # the summary, indented, is all of stdout
    base = summary.get("baseline") or {}
    return {
        "seconds": round(seconds, 1),
        "untuned_accuracy": base.get("accuracy"),
        "dp_accuracy": summary.get("accuracy"),
        "epsilon": summary.get("epsilon"),
    }


def minutes(seconds: float) -> str:
    """'5 min 48 s'"""
    m, s = divmod(round(seconds), 60)
    return f"{m} min {s:02d} s"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--notebook", default="04", help="the notebook's number or file stem (default 04), or none")
    ap.add_argument("--fast", action="store_true", help="fast mode (WORKBENCH_FAST=1): the tiny model")
    ap.add_argument("--demo", action="store_true", help="also time `make demo`'s command in a fresh home")
    ap.add_argument("--timeout", type=int, default=1800, help="seconds allowed per cell")
    ap.add_argument("--keep", type=Path, help="a folder to keep the run store and the executed notebooks in")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="nb-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    out: dict = {"machine": machine()}
    if args.notebook != "none":
        (path,) = sorted((ROOT / "notebooks").glob(f"{args.notebook}*.ipynb"))
        out.update(notebook=path.name, mode="fast" if args.fast else "full")
        out.update(execute(path, home=work / "home", fast=args.fast, timeout=args.timeout))
        if path.stem.startswith("04"):
            out.update(accuracies(work / "home", "dp-lora-demo"))
    if args.demo:
        out["make_demo"] = {"machine": machine(), **demo(work / "demo-home")}
    if args.json:
        print(json.dumps(out, indent=1))
        return
    m = out["machine"]
    print(f"machine: {m['cpu']}, {m['cores']} cores, load {m['load_average_before']:.1f} before; torch {m['torch']}")
    if "notebook" in out:
        print(
            f"{out['notebook']} ({out['mode']}): {minutes(out['seconds'])}; executed "
            f"{out['bytes'] / 1e6:.2f} MB saved as JupyterLab saves it, {out['bytes_with_widget_state'] / 1e6:.1f} MB "
            "with nbconvert's widget state"
        )
    if out.get("dp_accuracy") is not None:
        print(
            f"routing accuracy: untuned {out['untuned_accuracy']:.3f}, DP {out['dp_accuracy']:.3f} "
            f"(epsilon {out['epsilon']:.3g}, {out['steps']} steps, training {out['train_seconds']:.0f} s)"
        )
    if "make_demo" in out:
        d = out["make_demo"]
        print(
            f"make demo's command: {minutes(d['seconds'])}, routing accuracy "
            f"untuned {d['untuned_accuracy']}, DP {d['dp_accuracy']} (load {d['machine']['load_average_before']:.1f})"
        )


if __name__ == "__main__":
    main()
