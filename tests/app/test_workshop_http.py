"""Workshop isolation over HTTP (issue 31): a participant asks for another participant's run through every route
the app serves, and is refused: every Gradio event whose inputs name a run (found in the app's own config, so a
new event is covered without editing this test), Gradio's API endpoints, and the live stream. The instructor and
the owner, asking the same, are served: the refusals are the rule, not a broken route.

No browser, no training: the runs are stored ones (tests/factories.py)."""

from __future__ import annotations

import json
import uuid

import pytest
from factories import fake_run, free_port

pytestmark = pytest.mark.slow  # a served app per test: about 8 s each here (`make test` and CI run them)
httpx = pytest.importorskip("httpx")
pytest.importorskip("gradio")

PEOPLE = "name,password,role\nteacher,t-pass,instructor\nann,a-pass,\nbob,b-pass,\n"
ANN_RUN, BOB_RUN = "20250101-000000-annrun", "20250101-000001-bobrun"
SECRET_NAME = "ann-secret-settings"
# the components whose value names a run (a run id, or a list of them)
RUN_INPUTS = {"runs-picker", "compare-picker", "compare-open-run", "workshop-run"}
REFUSED = "among your runs"


@pytest.fixture
def served(_workbench_home, tmp_path):
    from workbench.app import build_app, serve
    from workbench.app.workshop import Workshop
    from workbench.session import Session
    from workbench.store.runs import RunStore

    store = RunStore(_workbench_home)
    for run_id, owner, acc in ((ANN_RUN, "ann", 0.777), (BOB_RUN, "bob", 0.555)):
        fake_run(store, run_id, steps=12, accuracy=acc)
        store.set_owner(run_id, owner)
    with store._conn() as c:  # noqa: SLF001 - a name only ann's pages may show
        c.execute("UPDATE runs SET name=? WHERE id=?", (SECRET_NAME, ANN_RUN))
    people = tmp_path / "people.csv"
    people.write_text(PEOPLE)
    room = Workshop.from_options(store, session_factory=Session, participants_file=str(people), join_code="ROOM42")
    app = build_app(store, defaults={"model": "tiny"}, workshop=room)
    _, url, _ = serve(app, port=free_port(), block=False, quiet=True)
    yield url.rstrip("/"), store, app
    app.close()


def login(url: str, name: str, password: str) -> httpx.Client:
    client = httpx.Client(base_url=url, timeout=60)
    r = client.post("/login", data={"username": name, "password": password})
    assert r.status_code == 200, r.text
    return client


def call_event(client: httpx.Client, fn_index: int, data: list, session: str | None = None) -> dict:
    """One Gradio event through its queue, as the page calls it (in browser session ``session``): (success,
    output)."""
    session = session or uuid.uuid4().hex[:10]
    r = client.post(
        "/gradio_api/queue/join",
        json={"data": data, "fn_index": fn_index, "session_hash": session, "event_data": None, "trigger_id": None},
    )
    assert r.status_code == 200, r.text
    with client.stream("GET", "/gradio_api/queue/data", params={"session_hash": session}) as stream:
        for line in stream.iter_lines():
            if not line.startswith("data:"):
                continue
            message = json.loads(line[5:])
            if message.get("msg") == "process_completed":
                return {"success": message.get("success"), "output": message.get("output")}
    raise AssertionError("no process_completed")


def run_events(config: dict) -> list[tuple[int, list, int]]:
    """(fn_index, default inputs, index of the run-naming input) for every event whose inputs name a run."""
    comps = {c["id"]: c for c in config["components"]}
    out = []
    for index, dep in enumerate(config["dependencies"]):
        if not dep.get("backend_fn"):
            continue
        elems = [comps[i].get("props", {}).get("elem_id") for i in dep["inputs"]]
        slots = [k for k, e in enumerate(elems) if e in RUN_INPUTS]
        if not slots:
            continue
        defaults = [comps[i].get("props", {}).get("value") for i in dep["inputs"]]
        multi = [comps[dep["inputs"][k]].get("props", {}).get("multiselect") for k in slots]
        for k, many in zip(slots, multi):
            defaults[k] = [ANN_RUN, BOB_RUN] if many else ANN_RUN
        out.append((dep.get("id", index), defaults, slots[0]))
    return out


def stream_first_update(client: httpx.Client, run_id: str) -> dict:
    r = client.post("/gradio_api/call/workbench_stream_key", json={"data": []})
    assert r.status_code == 200, r.text
    event = r.json()["event_id"]
    text = client.get(f"/gradio_api/call/workbench_stream_key/{event}").text
    key = json.loads(text.split("data:", 1)[1].strip().splitlines()[0])[0]
    params = {"run": run_id, "after": "0", "follow": "0", "key": key}
    with client.stream("GET", "/workbench/stream", params=params) as stream:
        assert stream.status_code == 200
        for line in stream.iter_lines():
            if line.startswith("data:"):
                return json.loads(line[5:])
    raise AssertionError("no update")


def test_every_route_refuses_another_participants_run(served):
    url, store, app = served
    bob = login(url, "bob", "b-pass")
    config = bob.get("/config").json()
    events = run_events(config)
    # every tab's run-naming events are found: Runs (open, evaluate, export, delete), Compare, Workshop controls
    assert len(events) >= 10, events
    for fn_index, data, _ in events:
        result = call_event(bob, fn_index, data)
        shown = json.dumps(result["output"])
        assert SECRET_NAME not in shown and "0.777" not in shown, (fn_index, shown[:500])
        refused = not result["success"] or REFUSED in shown or "Only the instructor" in shown
        assert refused, (fn_index, config["dependencies"][fn_index].get("api_name"), shown[:500])
    # the run is still there, untouched
    assert store.get(ANN_RUN).status == "finished" and store.get(ANN_RUN).name == SECRET_NAME

    # Gradio's public API: bob's list holds his run only
    r = bob.post("/gradio_api/call/list_runs", json={"data": [None]})
    listed = bob.get(f"/gradio_api/call/list_runs/{r.json()['event_id']}").text
    assert BOB_RUN in listed and ANN_RUN not in listed and SECRET_NAME not in listed

    # the live stream: bob's key shows him no row of ann's run; a forged key or none is refused
    update = stream_first_update(bob, ANN_RUN)
    assert REFUSED in update["header"] and not update["steps"], update
    assert bob.get("/workbench/stream", params={"run": ANN_RUN, "key": "YW5u.0000"}).status_code == 401
    assert bob.get("/workbench/stream", params={"run": ANN_RUN}).status_code == 401
    assert httpx.get(url + "/workbench/stream", params={"run": ANN_RUN}).status_code == 401


def test_the_owner_and_the_instructor_are_served_what_bob_is_refused(served):
    url, store, app = served
    for name, password in (("ann", "a-pass"), ("teacher", "t-pass")):
        client = login(url, name, password)
        update = stream_first_update(client, ANN_RUN)
        assert REFUSED not in update["header"] and len(update["steps"]) == 12
        r = client.post("/gradio_api/call/list_runs", json={"data": [None]})
        listed = client.get(f"/gradio_api/call/list_runs/{r.json()['event_id']}").text
        assert ANN_RUN in listed and (BOB_RUN in listed) == (name == "teacher")
    # the instructor's page, as it is used: the Runs tab lists the runs, then Open and Export on ann's run
    config = client.get("/config").json()
    session = uuid.uuid4().hex[:10]
    by_name = {d.get("api_name"): i for i, d in enumerate(config["dependencies"])}
    listed = call_event(client, by_name["list_runs"], [None], session)
    assert listed["success"] and ANN_RUN in json.dumps(listed["output"])
    asked = 0
    for fn, data, slot in run_events(config):
        dep = config["dependencies"][fn]
        elems = {c["id"]: c.get("props", {}).get("elem_id") for c in config["components"]}
        if elems[dep["inputs"][slot]] != "runs-picker" or len(dep["inputs"]) != 1:
            continue
        out = call_event(client, fn, data, session)
        assert out["success"] and REFUSED not in json.dumps(out["output"]), out
        asked += 1
    assert asked >= 3  # open, evaluate, export, ask-to-delete: served (evaluate says why it cannot, not 'not yours')


def test_join_code_messages(served):
    url, store, app = served
    client = httpx.Client(base_url=url, timeout=30)
    page = client.get("/workbench/join")
    assert page.status_code == 200 and "Join code" in page.text
    wrong = client.post("/workbench/join", data={"name": "cy", "password": "cy-pass", "code": "nope"})
    assert wrong.status_code == 400 and "join code is not this workshop" in wrong.text
    taken = client.post("/workbench/join", data={"name": "ann", "password": "xxxx", "code": "ROOM42"})
    assert taken.status_code == 400 and "the name &#x27;ann&#x27; is taken" in taken.text
    ok = client.post("/workbench/join", data={"name": "cy", "password": "cy-pass", "code": "ROOM42"})
    assert ok.status_code == 200 and "Welcome, cy" in ok.text
    again = client.post("/workbench/join", data={"name": "cy", "password": "other", "code": "ROOM42"})
    assert again.status_code == 400 and "taken" in again.text
    assert login(url, "cy", "cy-pass").get("/config").status_code == 200
    assert client.post("/login", data={"username": "cy", "password": "other"}).status_code == 400
