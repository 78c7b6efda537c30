"""A workshop on one machine (issue 31): 20 simulated participants on one `workbench app --workshop` server.

    flock /tmp/bench.lock python benchmarks/workshop.py [--participants 20] [--long-steps 40] [--short-steps 4]
                                                       [--plan-every 10] [--window 360] [--slots 1]
                                                       [--lead 600] [--later-at 60]

The server runs in this process (tiny model, a temporary run store, a participants file of N participants and an
instructor). The participants are HTTP clients in a second process (so their Python does not share the server's
interpreter lock; on a real workshop they sit at other machines), each with its own login and thread. Each one:

- follows the live stream (``/workbench/stream`` with its own key, following its newest run), as its Train tab does;
- asks the Plan tab for a plan every ``--plan-every`` seconds (give or take half), with another batch size each time,
  through the event the page calls (Gradio's queue, ``fn_index`` of the ``plan`` endpoint); the latency is from the
  request to the first answer (the first plan the page shows: the calibration and the bound's curve) and to the
  complete one (every curve and the user-level epsilon); all of a participant's events share one Gradio session
  (its page) and its stream uses the page's login;
- presses Start twice at once (its first and second run), through the Train tab's Start event, as the page does.

Measured, printed as JSON:

- ``alone``: ``--alone-runs`` runs of ``--long-steps`` with nobody else on the server (the same queue and training
  worker): the median of their steps per second (steps 3 to the end);
- ``loaded``: participant 0's first run is ``--long-steps`` long (default 400, about 7 s alone: a 40-step tiny run
  lasted 0.6 s, less than the arrival, and whether it overlapped the arrival at all was luck); the other 19 are let
  in once it has taken its step 3, and log in, open their pages, press Start, follow their streams and plan while it
  trains; its steps per second, and ``throughput_ratio`` = loaded / alone (the issue asks at least 0.9);
  ``burst_throughput_ratio``: the same over the first ``--burst`` seconds after the room was let in (the logins,
  pages and Start presses); ``loaded_run_cpu_share``: the cores each process used meanwhile;
- ``later``: participant 0's second run, as long, asked for ``--later-at`` seconds after the room arrived (it
  waits its fair turn behind the others' runs): the same ratio once the room has arrived (``later_throughput_ratio``);
- ``lead_s``: the server starts ``--lead`` seconds at most before the room arrives and plans the likely settings
  meanwhile (``serve(warm=True)``, as ``workbench app --workshop`` does); ``cpu_s``: the CPU seconds of the server
  process, the plan workers and the simulated clients over the window; ``plan_pool``: its cache hits, jobs and
  shared requests;
- ``plan_latency_s``: the first and the complete answers' median, 95th percentile and maximum;
- ``runs``: every run the participants asked for, by stored status once the window ended (queued runs still waiting
  then are cancelled by the instructor and stored 'stopped': nothing is lost or left 'queued');
- ``fairness``: pairs (one participant's first run, another's second run) where the second started before the first
  although the first was asked for before that second started: must be 0.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

DEFAULTS = {
    "model": "tiny",
    "batch_size": 8,
    "physical_batch_size": 8,
    "max_seq_len": 64,
    "eval_max_examples": 8,
    "generate_max_new_tokens": 4,
    "eval_every": 1000,  # one evaluation, at the end: the steps per second measure training, not evaluations
    "baseline_eval": False,
}


# -- the participants (a second process) ----------------------------------------------------------------------


def _login(url: str, name: str, password: str):
    import httpx

    client = httpx.Client(base_url=url, timeout=120)
    r = client.post("/login", data={"username": name, "password": password})
    r.raise_for_status()
    return client


def _event(client, fn_index: int, data: list, session: str) -> tuple[float | None, float, bool, list]:
    """One Gradio event through its queue: (seconds to the first answer, seconds to completion, success, output).
    ``session``: the page's session hash (a browser keeps one per page load; a new one per event made Gradio build
    a session state of the whole app for every request, about 40 ms of the server's CPU each)."""
    import json as _json

    t0 = time.perf_counter()
    body = {"data": data, "fn_index": fn_index, "session_hash": session, "event_data": None, "trigger_id": None}
    client.post("/gradio_api/queue/join", json=body).raise_for_status()
    first = None
    with client.stream("GET", "/gradio_api/queue/data", params={"session_hash": session}) as stream:
        for line in stream.iter_lines():
            if not line.startswith("data:"):
                continue
            msg = _json.loads(line[5:])
            if msg.get("msg") == "process_generating" and first is None:
                output = (msg.get("output") or {}).get("data") or []
                if any(v not in (None, "", [], {}) and not _skip(v) for v in output):
                    first = time.perf_counter() - t0
            if msg.get("msg") == "process_completed":
                done = time.perf_counter() - t0
                out = (msg.get("output") or {}).get("data") or []
                return (first if first is not None else done), done, bool(msg.get("success")), out
    raise RuntimeError("the event never completed")


def _skip(value) -> bool:
    return isinstance(value, dict) and value.get("__type__") == "update" and len(value) == 1


def _inputs(config: dict, dep: dict, overrides: dict) -> list:
    comps = {c["id"]: c for c in config["components"]}
    data = []
    for i in dep["inputs"]:
        props = comps[i].get("props", {})
        data.append(overrides.get(props.get("elem_id"), props.get("value")))
    return data


def _find(config: dict, *, api_name: str | None = None, trigger_elem: str | None = None) -> tuple[int, dict]:
    comps = {c["id"]: c for c in config["components"]}
    for index, dep in enumerate(config["dependencies"]):
        if api_name is not None and dep.get("api_name") == api_name:
            return dep.get("id", index), dep
        if trigger_elem is not None:
            for target in dep.get("targets") or []:
                comp = comps.get(target[0] if isinstance(target, list) else target)
                if comp and comp.get("props", {}).get("elem_id") == trigger_elem and dep.get("backend_fn"):
                    return dep.get("id", index), dep
    raise LookupError(api_name or trigger_elem)


def _follow(client, stop: threading.Event, counts: dict) -> None:
    """The Train tab's live stream, following the participant's newest run, until ``stop``."""
    import json as _json

    r = client.post("/gradio_api/call/workbench_stream_key", json={"data": []})
    text = client.get(f"/gradio_api/call/workbench_stream_key/{r.json()['event_id']}").text
    key = _json.loads(text.split("data:", 1)[1].strip().splitlines()[0])[0]
    after = 0
    while not stop.is_set():
        params = {"run": "", "after": str(after), "follow": "1", "key": key}
        try:
            with client.stream("GET", "/workbench/stream", params=params, timeout=None) as stream:
                for line in stream.iter_lines():
                    if stop.is_set():
                        return
                    if line.startswith("data:"):
                        counts["updates"] = counts.get("updates", 0) + 1
                        counts["bytes"] = counts.get("bytes", 0) + len(line)
        except Exception:  # noqa: BLE001 - the server closing at the end
            if not stop.is_set():
                time.sleep(1)


def _participant(url, name, steps, plan_every, duration, out: list, lock: threading.Lock) -> None:
    client = _login(url, name, "pw-" + name)
    config = client.get("/config").json()
    plan_fn, plan_dep = _find(config, api_name="plan")
    start_fn, start_dep = _find(config, trigger_elem="start")
    stop = threading.Event()
    counts: dict = {}
    import httpx

    # the page's live stream: its own connection with the page's login cookie (a browser logs in once)
    page_client = httpx.Client(base_url=url, timeout=120, cookies=client.cookies)
    follower = threading.Thread(target=_follow, args=(page_client, stop, counts), daemon=True)
    follower.start()
    record = {"name": name, "plans": [], "starts": [], "stream": counts}
    page = uuid.uuid4().hex[:10]  # the participant's page: one Gradio session for its events

    def press_start(i: int, n: int) -> None:
        t = time.time()
        _, _, ok, output = _event(client, start_fn, _inputs(config, start_dep, {"max-steps": n}), page)
        record["starts"].append({"asked": t, "ok": ok, "message": str(output)[:300], "nth": i})

    later = None
    for i, (n, delay) in enumerate(steps):  # the first and the second run, at once (or the second after ``delay``)
        if delay:
            later = threading.Timer(delay, press_start, (i, n))
            later.start()
        else:
            press_start(i, n)
    rng = random.Random(name)
    end = time.monotonic() + duration
    time.sleep(rng.uniform(0, plan_every))
    while time.monotonic() < end:
        batch = rng.choice([8, 16, 24, 32, 48, 64])
        first, done, ok, _ = _event(client, plan_fn, _inputs(config, plan_dep, {"batch-size": batch}), page)
        record["plans"].append({"first": first, "done": done, "ok": ok, "at": time.time()})
        time.sleep(max(0.0, rng.uniform(0.5, 1.5) * plan_every))
    if later is not None:
        later.join()
    stop.set()
    with lock:
        out.append(record)


def participants_process(url, names, long_steps, short_steps, plan_every, duration, path, later_at, go) -> None:
    """The N participants, one thread each; their records to ``path`` (JSON). At nice 10: on a real workshop they
    sit at other machines, and their CPU is not the server's (here 0.3 of a core while the room arrives)."""
    try:
        os.nice(10)
    except OSError:
        pass
    out: list = []
    lock = threading.Lock()
    threads = []
    for i, name in enumerate(names):
        # participant 0's runs are the measured ones: the first at once, the second once the room has arrived
        steps = [(long_steps, 0), (long_steps, later_at)] if i == 0 else [(short_steps, 0), (short_steps, 0)]
        t = threading.Thread(target=_participant, args=(url, name, steps, plan_every, duration, out, lock))
        threads.append(t)
        t.start()
        if i == 0:
            # participant 0's first run is the measured one: the room arrives once it trains (its step 3)
            go.wait(300)
    for t in threads:
        t.join()
    usage = os.times()  # the simulated clients' own CPU (on a real workshop, other machines')
    Path(path).write_text(json.dumps({"records": out, "client_cpu_s": usage.user + usage.system}))


# -- the server and the measurements -----------------------------------------------------------------------------


def steps_per_second(store, run_id: str) -> float | None:
    """A run's training speed from its stored step events (step 3 to the last: the first steps warm up)."""
    from workbench.events import StepMetrics

    times = [(e.step, e.time) for _, e in store.events(run_id) if isinstance(e, StepMetrics)]
    times = [(s, t) for s, t in times if s >= 3]
    if len(times) < 2:
        return None
    (s0, t0), (s1, t1) = times[0], times[-1]
    return (s1 - s0) / (t1 - t0) if t1 > t0 else None


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q * (len(values) - 1))))]


def fairness_violations(starts: dict, asked: dict, firsts: dict, seconds: dict) -> list:
    """(first run, second run) pairs of different participants where the second started before the first although
    the first had been asked for before the second started."""
    bad = []
    for owner, first in firsts.items():
        for other, second in seconds.items():
            if owner == other or second not in starts:
                continue
            if asked[first] < starts[second] and starts.get(first, float("inf")) > starts[second]:
                bad.append((first, second))
    return bad


def _cpu_s() -> float:
    """This process's CPU seconds (the server: its event loop, the plan requests' threads and the training)."""
    t = os.times()
    return t.user + t.system


def _workers_cpu_s(pool) -> float | None:
    """CPU seconds of the plan pool's worker processes so far (psutil; None without it or without workers)."""
    try:
        import psutil
    except ImportError:
        return None
    return _cpu_of(psutil, pool.processes())


def _cpu_of(psutil, pids) -> float:
    """The CPU seconds so far of the processes ``pids`` (those that ended meanwhile count nothing)."""
    total = 0.0
    for pid in pids:
        try:
            t = psutil.Process(pid).cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def _sample(room, clients_pid: int, out: list, done: threading.Event, every: float = 0.1) -> None:
    """Every ``every`` seconds: the CPU seconds so far of the server, the training workers, the plan workers and
    the simulated clients (psutil; nothing without it)."""
    try:
        import psutil
    except ImportError:
        return

    def cpu(pids) -> float:
        return _cpu_of(psutil, pids)

    factory = room.queue.session_factory
    training = getattr(factory, "processes", lambda: [])
    while not done.is_set():
        out.append(
            (
                time.time(),
                {
                    "server": _cpu_s(),
                    "training": cpu(training()),
                    "plan": cpu(room.plan_pool.processes()),
                    "clients": cpu([clients_pid]),
                },
            )
        )
        time.sleep(every)


def _arrive_when_training(store, owner: str, before: set, go, arrived: list, timeout: float = 300.0) -> None:
    """Set ``go`` once ``owner``'s first new run has stored its step 3 (or after ``timeout``)."""
    from workbench.events import StepMetrics

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        mine = [r for r in store.list() if r.owner == owner and r.id not in before]
        if mine and any(isinstance(e, StepMetrics) and e.step >= 3 for _, e in store.events(mine[-1].id)):
            break
        time.sleep(0.05)
    arrived.append(time.time())
    go.set()


def speed_between(store, run_id: str, start: float, end: float) -> float | None:
    """A run's steps per second between two times (its step events in that span)."""
    from workbench.events import StepMetrics

    times = [(e.step, e.time) for _, e in store.events(run_id) if isinstance(e, StepMetrics) and start <= e.time <= end]
    if len(times) < 2 or times[-1][1] <= times[0][1]:
        return None
    return (times[-1][0] - times[0][0]) / (times[-1][1] - times[0][1])


def cpu_during(store, run_id: str, samples: list) -> dict | None:
    """Cores each process used while the run took its measured steps (step 3 to the last), from the samples."""
    from workbench.events import StepMetrics

    times = [e.time for _, e in store.events(run_id) if isinstance(e, StepMetrics) and e.step >= 3]
    if len(times) < 2 or len(samples) < 2:
        return None
    a = max((s for s in samples if s[0] <= times[0]), key=lambda s: s[0], default=samples[0])
    b = min((s for s in samples if s[0] >= times[-1]), key=lambda s: s[0], default=samples[-1])
    span = b[0] - a[0]
    if span <= 0:
        return None
    return {"seconds": round(span, 2), **{k: round((b[1][k] - a[1][k]) / span, 2) for k in a[1]}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--participants", type=int, default=20)
    ap.add_argument(
        "--long-steps",
        type=int,
        default=400,
        help="the measured runs' steps: long enough to last the room's arrival (a 40-step tiny run lasts 0.6 s)",
    )
    ap.add_argument("--short-steps", type=int, default=4)
    ap.add_argument("--plan-every", type=float, default=10.0)
    ap.add_argument("--window", type=float, default=360.0, help="seconds the participants stay")
    ap.add_argument("--slots", type=int, default=1)
    ap.add_argument(
        "--later-at",
        type=float,
        default=60.0,
        help="seconds after the room arrives that participant 0 presses Start for its second (measured) run",
    )
    ap.add_argument(
        "--lead",
        type=float,
        default=600.0,
        help="at most this many seconds between the server's start and the room's arrival, while it plans the "
        "likely settings in the background (the instructor starts the server before the session); 0: none",
    )
    ap.add_argument("--burst", type=float, default=3.0, help="seconds after the room is let in: the arrival")
    ap.add_argument("--alone-runs", type=int, default=3, help="runs alone; their median is the baseline")
    ap.add_argument(
        "--in-process",
        action="store_true",
        help="train on threads of the server's process (the design before the training workers) to compare",
    )
    args = ap.parse_args()

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from factories import free_port

    from workbench.app import build_app, serve
    from workbench.app.workshop import Workshop
    from workbench.config import RunConfig
    from workbench.session import Session
    from workbench.store.runs import ACTIVE, RunStore

    load_before = os.getloadavg()  # the machine is shared: its load beside the figures
    home = Path(tempfile.mkdtemp(prefix="workbench-workshop-bench-"))
    os.environ["WORKBENCH_HOME"] = str(home)
    names = [f"p{i:02d}" for i in range(args.participants)]
    people = home / "people.csv"
    people.write_text("name,password,role\nteacher,t-pw,instructor\n" + "".join(f"{n},pw-{n},\n" for n in names))
    store = RunStore(home)

    # the runs train in the workshop's worker processes, as `workbench app --workshop` has them (training_pool.py);
    # --in-process: on threads of the server's process, as before
    factory = Session if args.in_process else None
    room = Workshop.from_options(
        store, session_factory=factory, participants_file=str(people), slots=args.slots, max_queued=2
    )
    # alone: the long run with nobody on the server yet, on the same queue and worker the room will use (the
    # instructor's runs: the participants' places in the queue stay untouched). The first run of a setting in a
    # process computes the epsilon of the steps its plan's curve skipped, inline (about half its speed, 400 steps);
    # later runs of it find them computed. The median of the runs alone, and the room's runs, are such later runs.
    cfg = RunConfig().with_overrides({**DEFAULTS, "max_steps": args.long_steps})
    alone_all = []
    for _ in range(max(1, args.alone_runs)):
        alone_id = room.queue.submit(cfg, owner="teacher")
        room.queue.wait_idle(600)
        alone_all.append(steps_per_second(store, alone_id))
    alone = statistics.median([a for a in alone_all if a]) if any(alone_all) else None

    started: dict[str, float] = {}
    room.queue.subscribe(lambda e: started.setdefault(e.run_id, e.time) if e.kind == "started" else None)
    # the controls open in steps (not epochs), so each Start's max-steps is the run's length
    app = build_app(store, defaults={**DEFAULTS, "max_steps": args.short_steps}, workshop=room)
    _, url, _ = serve(app, port=free_port(), block=False, quiet=True, warm=args.lead > 0)
    lead0 = time.time()
    warmed = room.plan_pool.wait_warm(args.lead) if args.lead > 0 else False
    lead = time.time() - lead0
    before = {r.id for r in store.list()}
    path = home / "participants.json"
    ctx = mp.get_context("spawn")
    go = ctx.Event()  # set once participant 0's measured run has taken step 3: the room arrives while it trains
    arrived: list = []  # when the room was let in
    threading.Thread(target=_arrive_when_training, args=(store, "p00", before, go, arrived), daemon=True).start()
    proc = ctx.Process(
        target=participants_process,
        args=(
            url.rstrip("/"),
            names,
            args.long_steps,
            args.short_steps,
            args.plan_every,
            args.window,
            str(path),
            args.later_at,
            go,
        ),
    )
    t0 = time.time()
    server_cpu0 = _cpu_s()
    proc.start()
    samples: list = []  # (time, CPU seconds of each process so far): what shared the cores while a run trained
    sampling = threading.Event()
    sampler = threading.Thread(target=_sample, args=(room, proc.pid, samples, sampling), daemon=True)
    sampler.start()
    proc.join(args.window + 300)
    server_cpu = _cpu_s() - server_cpu0
    sampling.set()
    workers_cpu = _workers_cpu_s(room.plan_pool)
    training_cpu = _workers_cpu_s(room.queue.session_factory) if not args.in_process else None
    # the window is over: the instructor cancels what still waits; everything ends stored
    for q in room.queue.snapshot():
        try:
            room.queue.cancel(q.run_id)
        except Exception:  # noqa: BLE001 - ended meanwhile
            pass
    room.queue.wait_idle(300)
    app.close()

    written = json.loads(path.read_text())
    records, client_cpu = written["records"], written["client_cpu_s"]
    runs = [r for r in store.list() if r.id not in before]
    by_owner: dict[str, list] = {}
    for r in sorted(runs, key=lambda r: r.created):
        by_owner.setdefault(r.owner, []).append(r)
    firsts = {o: rs[0].id for o, rs in by_owner.items()}
    seconds = {o: rs[1].id for o, rs in by_owner.items() if len(rs) > 1}
    asked = {r.id: r.created for r in runs}
    long_id = firsts.get("p00")
    loaded = steps_per_second(store, long_id) if long_id else None
    later_id = seconds.get("p00")  # the same length, started after every participant's first run: the room settled
    later = steps_per_second(store, later_id) if later_id else None
    loaded_cpu = cpu_during(store, long_id, samples) if long_id else None
    later_cpu = cpu_during(store, later_id, samples) if later_id else None
    burst = speed_between(store, long_id, arrived[0], arrived[0] + args.burst) if long_id and arrived else None
    firsts_t = [p["first"] for rec in records for p in rec["plans"] if p["ok"]]
    done_t = [p["done"] for rec in records for p in rec["plans"] if p["ok"]]
    warm = [p["first"] for rec in records for p in rec["plans"] if p["ok"] and p["at"] > t0 + 60]
    statuses: dict[str, int] = {}
    for r in runs:
        statuses[r.status] = statuses.get(r.status, 0) + 1
    result = {
        "load_average_before_after": [load_before, os.getloadavg()],
        "participants": args.participants,
        "slots": args.slots,
        "training": "in the server's process" if args.in_process else "worker processes",
        "cpu_count": os.cpu_count(),
        "window_s": round(time.time() - t0, 1),
        "lead_s": round(lead, 1),
        "warm_up_finished": warmed,
        "warm_settings": len(getattr(app, "plan_warm", None) or []),
        "alone_steps_per_s": alone,
        "alone_runs_steps_per_s": alone_all,
        "loaded_steps_per_s": loaded,
        "throughput_ratio": (loaded / alone) if loaded and alone else None,
        "loaded_run_cpu_share": loaded_cpu,
        "burst_steps_per_s": burst,
        "burst_throughput_ratio": (burst / alone) if burst and alone else None,
        "later_steps_per_s": later,
        "later_throughput_ratio": (later / alone) if later and alone else None,
        "later_run_cpu_share": later_cpu,
        "plan_requests": len(firsts_t),
        "plan_failures": sum(1 for rec in records for p in rec["plans"] if not p["ok"]),
        "plan_latency_s": {
            "first_answer": {
                "p50": statistics.median(firsts_t),
                "p95": percentile(firsts_t, 0.95),
                "max": max(firsts_t),
            }
            if firsts_t
            else None,
            "complete": {"p50": statistics.median(done_t), "p95": percentile(done_t, 0.95), "max": max(done_t)}
            if done_t
            else None,
        },
        "plan_first_answer_within_1s_share": (sum(t <= 1.0 for t in firsts_t) / len(firsts_t)) if firsts_t else None,
        "plan_first_answer_p95_after_first_60s": percentile(warm, 0.95) if warm else None,
        "cpu_s": {
            "server_process": round(server_cpu, 1),
            "plan_workers": None if workers_cpu is None else round(workers_cpu, 1),
            "training_workers": None if training_cpu is None else round(training_cpu, 1),
            "clients_process": round(client_cpu, 1),
        },
        "plan_pool": getattr(room.plan_pool, "stats", lambda: None)(),
        "stream_updates": sum(rec["stream"].get("updates", 0) for rec in records),
        "runs_asked": sum(len(rec["starts"]) for rec in records),
        "runs_stored": len(runs),
        "runs_by_status": statuses,
        "runs_max_steps": sorted({r.config.get("max_steps") for r in runs}, key=str),
        "runs_left_active": sum(1 for r in runs if r.status in ACTIVE),
        "runs_started": len(started),
        "fairness_violations": fairness_violations(started, asked, firsts, seconds),
        "start_order_owners": [store.get(r).owner for r in sorted(started, key=started.get)][:45],
        "start_refusals": [
            s["message"]
            for rec in records
            for s in rec["starts"]
            if "queued" not in s["message"] and "Started" not in s["message"]
        ][:5],
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
