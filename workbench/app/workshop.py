"""Workshop mode (``workbench app --workshop``): one server for a room of participants.

- **Who is who.** Gradio's own login (``launch(auth=Workshop.auth)``) names every request's user
  (``gr.Request.username``). People come from a participants file, from a join code, or both:

  * ``--participants-file people.csv``: a CSV file with a header ``name,password,role``; role ``instructor`` marks
    an instructor (any other value, or none, a participant). Example::

        name,password,role
        teacher,correct-horse,instructor
        ann,apple-7
        bob,pear-3

  * ``--join-code CODE`` (with ``--instructor NAME:PASSWORD`` unless the file names an instructor): a participant
    opens ``/workbench/join``, picks a name and a password and types the code; a taken name or a wrong code gets one
    message there. Joined participants are kept (passwords hashed with scrypt) in ``workshop-participants.json``
    beside the run store, so a restarted server still knows them.

- **Isolation.** Runs get an owner (the store's owner column). A participant's Train, Runs and Compare tabs, the
  live stream and every callback that names a run see and act on their own runs only; the instructor's, on all.
  ``check`` is the one rule every route calls; a run that is not yours reads as not found to you (its existence is
  not confirmed). Uploads go to ``uploads/<name>/`` and a participant's data is the demo data, their own uploads or
  a dataset name, never another file of the server's.
- **The fair queue** (workbench/running/queue.py) starts every run: round-robin across participants, a limit of
  queued runs each, the instructor's pause, reorder and cancel, ``slots`` small runs at once.
- **The class view** (this module's tab): the class's runs on the shared dataset as one privacy-utility frontier
  (names shown or anonymised, as the instructor chooses), the best accuracy at or below a target epsilon, and the
  ledger's total for that dataset (every participant's runs on it compose).

(No ``from __future__ import annotations`` here: Gradio reads the ``gr.Request`` hints at run time.)
"""

import csv
import hashlib
import hmac
import html
import json
import math
import re
import secrets
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from workbench.errors import UserError
from workbench.store.runs import ACTIVE, RunNotFound, RunRecord, RunStore

JOIN_PATH = "/workbench/join"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.\-]{0,31}$")
JOINED_FILE = "workshop-participants.json"
ACCOUNTING_CACHE = "cache/accounting.sqlite"  # calibrations kept for the Plan tab's workers (planning/disk_cache.py)


class WorkshopError(UserError, ValueError):
    """A workshop rule refused something; the message says what and what to do."""


class JoinError(WorkshopError):
    """A join refused: a wrong code, a taken name, a name or password that cannot be used."""


class RunNotYours(RunNotFound):
    """A run that is not the asking participant's: to them it reads as not found (a UserError)."""

    def __str__(self) -> str:
        return (
            f"no run {self.args[0]!r} among your runs: in a workshop each participant sees and manages only their "
            "own runs (the instructor sees all)."
        )


def _hash(password: str, salt: bytes | None = None) -> str:
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=2**14, r=8, p=1)
    return salt.hex() + "$" + digest.hex()


def _matches(password: str, stored: str) -> bool:
    salt, _, digest = stored.partition("$")
    return hmac.compare_digest(_hash(password, bytes.fromhex(salt)).partition("$")[2], digest)


@dataclass(frozen=True)
class Person:
    name: str
    secret: str  # scrypt hash (salt$digest)
    instructor: bool = False


def read_participants(path: str | Path) -> list[Person]:
    """The participants file (CSV: name,password[,role]); WorkshopError naming the line for a bad one."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as err:
        raise WorkshopError(f"cannot read the participants file {path}: {err.strerror or err}.") from None
    rows = list(csv.DictReader(text.splitlines()))
    if not rows or not {"name", "password"} <= set(rows[0]):
        raise WorkshopError(
            f"{path}: expected a CSV file with a header line 'name,password,role' and one line a person "
            "(role 'instructor' marks the instructor)."
        )
    people, seen = [], set()
    for line, row in enumerate(rows, start=2):
        name, password = (row.get("name") or "").strip(), row.get("password") or ""
        if not NAME_RE.match(name) or not password:
            raise WorkshopError(
                f"{path}, line {line}: each person needs a name (letters, digits, space, _ . -; at most 32) and a "
                "password."
            )
        if name in seen:
            raise WorkshopError(f"{path}, line {line}: the name {name!r} appears twice.")
        seen.add(name)
        role = (row.get("role") or "").strip().lower()
        people.append(Person(name, _hash(password), instructor=role == "instructor"))
    return people


class Workshop:
    """The participants, the access rule and the queue of one workshop server (see the module docstring)."""

    def __init__(
        self,
        store: RunStore,
        *,
        people: list[Person],
        queue: Any,
        join_code: str | None = None,
        anonymous: bool = False,
        target_epsilon: float = 4.0,
    ) -> None:
        if not any(p.instructor for p in people):
            raise WorkshopError(
                "a workshop needs an instructor login: mark one in the participants file (role 'instructor') or "
                "pass --instructor NAME:PASSWORD."
            )
        self.store = store
        self.queue = queue
        self.join_code = join_code
        self.anonymous = anonymous
        self.target_epsilon = target_epsilon
        self._people = {p.name: p for p in people}
        self._lock = threading.Lock()
        # the Plan tab's answers, in worker processes started on first use (app/plan_pool.py)
        from workbench.app.plan_pool import PlanPool

        self.plan_pool = PlanPool(accounting_cache=store.home / ACCOUNTING_CACHE)
        self._joined_path = store.home / JOINED_FILE
        if join_code:
            for name, secret in self._load_joined().items():
                self._people.setdefault(name, Person(name, secret))

    @classmethod
    def from_options(
        cls,
        store: RunStore,
        *,
        session_factory: Callable[..., Any] | None = None,
        participants_file: str | None = None,
        join_code: str | None = None,
        instructor: str | None = None,
        slots: int = 1,
        max_queued: int = 2,
    ) -> "Workshop":
        """What ``workbench app --workshop`` builds from its flags. ``session_factory``: what makes a queued run's
        session; by default a ``TrainingPool`` of one worker process a slot (training_pool.py), so that the runs
        train outside the server's process and keep their speed while the room logs in and plans; ``Session``
        trains them on threads of this process."""
        from workbench.running.queue import FairQueue

        if not participants_file and not join_code:
            raise WorkshopError("--workshop needs --participants-file FILE, --join-code CODE, or both.")
        people = read_participants(participants_file) if participants_file else []
        if instructor:
            name, sep, password = instructor.partition(":")
            if not sep or not NAME_RE.match(name.strip()) or not password:
                raise WorkshopError("--instructor takes NAME:PASSWORD (a name of letters, digits, space, _ . -).")
            people.append(Person(name.strip(), _hash(password), instructor=True))
        queue = FairQueue(store, slots=slots, max_queued=max_queued, session_factory=session_factory)
        if session_factory is None:  # the queue has checked its slots: one training worker each
            from workbench.training_pool import TrainingPool, worker_threads

            queue.session_factory = TrainingPool(store.home, workers=slots, threads=worker_threads(slots))
        return cls(store, people=people, queue=queue, join_code=join_code)

    def yield_to_training(self) -> bool:
        """When the runs train in worker processes (training_pool.py), lower the server's CPU priority below
        theirs (``TrainingPool.yield_to_training``); False when they train in this process."""
        pool = self.queue.session_factory
        return bool(getattr(pool, "yield_to_training", None) and pool.yield_to_training())

    def close(self) -> None:
        """Stop the Plan tab's worker processes and the training workers, if any (the app's close does it
        too)."""
        self.plan_pool.close()
        close = getattr(self.queue.session_factory, "close", None)
        if callable(close):
            close()

    # -- who is who ----------------------------------------------------------------------------------
    def auth(self, username: str, password: str) -> bool:
        """Gradio's login check (``launch(auth=...)``)."""
        person = self._people.get((username or "").strip())
        return person is not None and _matches(password or "", person.secret)

    def is_instructor(self, user: str | None) -> bool:
        person = self._people.get(user or "")
        return person is not None and person.instructor

    @property
    def names(self) -> list[str]:
        return sorted(self._people)

    def join(self, name: str, password: str, code: str) -> str:
        """A participant joins with the code: JoinError with one message for a wrong code, a taken name, a name or
        password that cannot be used; else the message that says how to log in."""
        name = (name or "").strip()
        if not self.join_code:
            raise JoinError("this workshop has no join code: ask the instructor for your name and password.")
        if not hmac.compare_digest((code or "").strip().encode(), self.join_code.encode()):
            raise JoinError("that join code is not this workshop's: check the code the instructor gave and try again.")
        if not NAME_RE.match(name):
            raise JoinError(
                f"{name!r} cannot be a name here: use 1 to 32 letters, digits, spaces, _ . or -, starting with a "
                "letter or digit."
            )
        if len(password or "") < 4:
            raise JoinError("choose a password of at least 4 characters: you log in with it.")
        with self._lock:
            if name in self._people:
                raise JoinError(f"the name {name!r} is taken in this workshop: choose another name.")
            person = Person(name, _hash(password))
            self._people[name] = person
            joined = self._load_joined()
            joined[name] = person.secret
            self._joined_path.write_text(json.dumps(joined))
            self._joined_path.chmod(0o600)
        return f"Welcome, {name}: log in with your name and the password you chose."

    def _load_joined(self) -> dict[str, str]:
        try:
            return json.loads(self._joined_path.read_text())
        except (OSError, ValueError):
            return {}

    # -- the access rule -----------------------------------------------------------------------------
    def visible(self, user: str | None) -> list[RunRecord]:
        if self.is_instructor(user):
            return self.store.list()
        return self.store.list(owner=user) if user else []

    def check(self, user: str | None, run_id: str) -> RunRecord:
        """The run, when ``user`` may see and manage it; RunNotYours otherwise (also for a run that does not
        exist, for a participant: whether another's run exists is not said)."""
        try:
            record = self.store.get(run_id)
        except RunNotFound:
            if self.is_instructor(user):
                raise
            raise RunNotYours(run_id) from None
        if self.is_instructor(user) or (user is not None and record.owner == user):
            return record
        raise RunNotYours(run_id)

    def uploads_dir(self, user: str | None) -> Path:
        safe = re.sub(r"[^\w.\-]", "_", user or "anonymous")
        return self.store.home / "uploads" / safe

    def check_data(self, user: str | None, source: str) -> None:
        """A participant's data: the demo data, a dataset name, or a file in their own uploads folder."""
        if self.is_instructor(user) or not source or source == "demo":
            return
        path = Path(source).expanduser()
        try:
            resolved = path.resolve()
        except OSError:
            resolved = path
        own = self.uploads_dir(user).resolve()
        uploads = (self.store.home / "uploads").resolve()
        if resolved.is_relative_to(own):
            return
        if resolved.is_relative_to(uploads) or path.exists() or path.is_absolute() or source.startswith("."):
            raise WorkshopError(
                f"{source}: in a workshop you train on the demo data, a dataset name, or a file you uploaded "
                "(the Plan tab's upload box); files of the server's are not open to participants."
            )

    # -- the class view ------------------------------------------------------------------------------
    def label(self, owner: str | None, viewer: str | None, labels: dict[str, str]) -> str:
        """A run owner's name as ``viewer`` sees it in the class view: their own as "you", the others' by name or
        as "participant N" when the instructor anonymises the view (the instructor always sees names)."""
        owner = owner or "(no owner)"
        if owner == viewer:
            return f"{owner} (you)"
        if not self.anonymous or self.is_instructor(viewer):
            return owner
        return labels.setdefault(owner, f"participant {len(labels) + 1}")


# -- the class view's numbers (no gradio) ---------------------------------------------------------------


@dataclass(frozen=True)
class ClassPoint:
    run_id: str
    owner: str | None
    epsilon: float
    utility: float


def class_dataset(ctx) -> Any:
    """The ledger's dataset that most of the class's runs trained on (the shared dataset), or None."""
    from workbench.store.ledger import Ledger

    owned = {r.id for r in ctx.store.list() if r.owner is not None}
    datasets = Ledger(ctx.store).datasets()
    scored = [(sum(e.run_id in owned for e in d.entries), d) for d in datasets]
    scored = [(n, d) for n, d in scored if n]
    return max(scored, key=lambda nd: nd[0])[1] if scored else None


def class_points(ctx, dataset) -> tuple[list[ClassPoint], str]:
    """The class's ended runs on ``dataset`` with a final epsilon and an evaluation: (points, metric name), the
    metric accuracy when any has one, else validation loss."""
    ids = {e.run_id for e in dataset.entries} if dataset is not None else set()
    records = [r for r in ctx.store.list() if r.id in ids and r.owner is not None and r.status not in ACTIVE]
    with_acc = [r for r in records if _number((r.summary or {}).get("accuracy")) is not None]
    metric = "accuracy" if with_acc else "val_loss"
    points = []
    for r in records:
        eps, value = r.final_epsilon, _number((r.summary or {}).get(metric))
        if eps is not None and math.isfinite(eps) and value is not None:
            points.append(ClassPoint(r.id, r.owner, float(eps), float(value)))
    return points, metric


def best_at(points: list[ClassPoint], target: float, metric: str) -> ClassPoint | None:
    """The best run at or below epsilon ``target`` (highest accuracy, or lowest validation loss)."""
    eligible = [p for p in points if p.epsilon <= target + 1e-9]
    if not eligible:
        return None
    return max(eligible, key=lambda p: p.utility) if metric == "accuracy" else min(eligible, key=lambda p: p.utility)


def _number(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def class_summary(ctx, viewer: str | None) -> tuple[Any, str]:
    """(frontier figure, Markdown: the best at the target epsilon and the ledger's total) for ``viewer``."""
    import plotly.graph_objects as go

    from workbench.present.compare import pareto_front
    from workbench.present.ledger import dataset_title, total_text

    w = ctx.workshop
    dataset = class_dataset(ctx)
    points, metric = class_points(ctx, dataset)
    labels: dict[str, str] = {}
    fig = go.Figure()
    by_owner: dict[str, list[ClassPoint]] = {}
    for p in points:
        by_owner.setdefault(w.label(p.owner, viewer, labels), []).append(p)
    for name, pts in sorted(by_owner.items()):
        fig.add_trace(
            go.Scatter(
                x=[p.epsilon for p in pts],
                y=[p.utility for p in pts],
                mode="markers",
                name=name,
                marker={"size": 11},
                text=[p.run_id if (p.owner == viewer or w.is_instructor(viewer)) else "" for p in pts],
            )
        )
    if points:
        on = pareto_front([(p.epsilon, p.utility) for p in points], maximize=metric == "accuracy")
        front = sorted((p for p, keep in zip(points, on) if keep), key=lambda p: p.epsilon)
        fig.add_trace(
            go.Scatter(
                x=[p.epsilon for p in front],
                y=[p.utility for p in front],
                mode="lines",
                name="the class's frontier",
                line={"dash": "dot", "color": "#444"},
            )
        )
    fig.update_layout(
        title="The class's privacy–utility frontier",
        xaxis_title="ε (final)",
        yaxis_title="accuracy" if metric == "accuracy" else "validation loss",
        height=380,
        margin={"l": 50, "r": 20, "t": 50, "b": 40},
    )
    target = w.target_epsilon
    best = best_at(points, target, metric)
    lines = []
    if dataset is None:
        lines.append("No run of the class has trained yet: the frontier fills as runs end.")
    else:
        lines.append(f"**Shared dataset:** {html.escape(dataset_title(dataset))}")
        if best is None:
            lines.append(f"**Best at ε ≤ {target:g}:** no evaluated run at or below it yet.")
        else:
            who = w.label(best.owner, viewer, {**labels})
            name = "accuracy" if metric == "accuracy" else "validation loss"
            lines.append(
                f"**Best at ε ≤ {target:g}:** {html.escape(who)}, {name} {best.utility:.3f} at ε = {best.epsilon:.3g}"
            )
        lines.append(
            f"**Privacy ledger for this dataset (every participant's runs compose):** "
            f"{html.escape(total_text(dataset))}"
        )
    lines.append(f"{len(points)} evaluated run(s) of the class on it.")
    return fig, "\n\n".join(lines)


# -- requests: who asks ---------------------------------------------------------------------------------


def takes_request(fn: Callable) -> Callable:
    """Gradio passes the request to ``fn``'s ``request`` parameter (its login's ``username``): the hint is set here
    as a value, so a callback in a module with postponed annotations gets it too."""
    import builtins

    import gradio as gr

    hints = {}
    for name, hint in fn.__annotations__.items():  # postponed: builtin names ("str") are read, the others dropped
        hint = getattr(builtins, hint, None) if isinstance(hint, str) else hint
        if hint is not None:
            hints[name] = hint
    fn.__annotations__ = {**hints, "request": gr.Request}
    return fn


def user_of(request: Any) -> str | None:
    """The logged-in user of a Gradio request (None without a login)."""
    return getattr(request, "username", None) if request is not None else None


def user_key(ctx, user: str | None) -> str:
    """The live stream's key for ``user``: their name and an HMAC of it under the server's secret, so the stream
    knows who asks without reading Gradio's cookies (workbench/app/live.py)."""
    import base64

    name = base64.urlsafe_b64encode((user or "").encode()).decode().rstrip("=")
    return name + "." + hmac.new(ctx.stream_key.encode(), (user or "").encode(), hashlib.sha256).hexdigest()


def key_user(ctx, key: str) -> str | None:
    """The user a stream key was handed to, or None for a key this server did not make."""
    import base64

    name, _, mac = (key or "").partition(".")
    try:
        user = base64.urlsafe_b64decode(name + "=" * (-len(name) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        return None
    return user if user and hmac.compare_digest(user_key(ctx, user).encode(), (key or "").encode()) else None


# -- the join page --------------------------------------------------------------------------------------

JOIN_FORM = """<!doctype html><html><head><meta charset="utf-8"><title>Join the workshop</title>
<style>body{{font-family:system-ui,sans-serif;max-width:420px;margin:60px auto}}label{{display:block;margin:10px 0}}
input{{width:100%;padding:6px}}.msg{{padding:8px;margin:10px 0;border-radius:6px}}.bad{{background:#fde8e8;color:#b00020}}
.ok{{background:#e8f5e9;color:#1b5e20}}</style></head><body><h2>Join the workshop</h2>{message}
<form method="post"><label>Your name <input name="name" id="join-name" required maxlength="32"></label>
<label>A password (you log in with it) <input name="password" id="join-password" type="password" required></label>
<label>Join code <input name="code" id="join-code" required></label><button id="join-submit">Join</button></form>
<p><a href="{root}/">Log in</a></p></body></html>"""


def join_routes(ctx) -> list:
    """``/workbench/join``: a participant picks a name and a password and gives the join code (GET the form, POST
    it); one message for a wrong code or a taken name, the login's link once joined."""
    from fastapi import APIRouter
    from fastapi.responses import HTMLResponse

    async def join(request):
        root = str(request.scope.get("root_path") or "").rstrip("/")
        if request.method == "GET":
            return HTMLResponse(JOIN_FORM.format(message="", root=html.escape(root)))
        form = await request.form()
        try:
            text = ctx.workshop.join(
                str(form.get("name", "")), str(form.get("password", "")), str(form.get("code", ""))
            )
        except JoinError as err:
            page = JOIN_FORM.format(
                message=f'<div class="msg bad" id="join-message">{html.escape(str(err))}</div>', root=html.escape(root)
            )
            return HTMLResponse(page, status_code=400)
        message = f'<div class="msg ok" id="join-message">{html.escape(text)}</div>'
        return HTMLResponse(JOIN_FORM.format(message=message, root=html.escape(root)))

    router = APIRouter()
    router.add_route(JOIN_PATH, join, methods=["GET", "POST"], include_in_schema=False)
    return list(router.routes)


# -- the Workshop tab -------------------------------------------------------------------------------------


def queue_rows(ctx, viewer: str | None) -> dict[str, Any]:
    """The queue as Gradio's Dataframe value for ``viewer``: the running runs and the queued ones in the order they
    start, with the estimate; a participant sees their own runs and only the places of the others'."""
    from workbench.running.queue import wait_text

    w = ctx.workshop
    instructor = w.is_instructor(viewer)
    rows = []
    for q in w.queue.snapshot():
        mine = instructor or q.owner == viewer
        where = "training" if q.status == "running" else wait_text(q.position, q.wait_s)
        rows.append([q.position or "", q.run_id if mine else "(another participant's)", q.owner if mine else "", where])
    return {"headers": ["place", "run", "participant", "when"], "data": rows}


def queue_line(ctx, viewer: str | None) -> str:
    """One line over the table: paused or not, and this participant's runs' places."""
    from workbench.running.queue import wait_text

    w = ctx.workshop
    parts = ["⏸ **The instructor has paused the queue**: queued runs start when it resumes." if w.queue.paused else ""]
    for q in w.queue.snapshot():
        if q.owner == viewer and q.status == "queued":
            parts.append(f"Your run `{q.run_id}`: {wait_text(q.position, q.wait_s)}.")
    who = "instructor" if w.is_instructor(viewer) else "participant"
    parts.append(f"Logged in as **{html.escape(viewer or '?')}** ({who}); {w.queue.slots} run(s) train at once.")
    return "\n\n".join(p for p in parts if p)


def instructor_action(ctx, viewer: str | None, action: str, run_id: str | None, position: Any = None) -> str:
    """pause | resume | cancel | move, by the instructor only; one message for each refusal."""
    from workbench.app.common import error_text

    w = ctx.workshop
    if not w.is_instructor(viewer):
        return "⚠️ Only the instructor can pause, reorder or cancel the queue."
    try:
        if action == "pause":
            w.queue.pause()
            return "Paused: queued runs wait; the runs training go on."
        if action == "resume":
            w.queue.resume()
            return "Resumed."
        if not run_id:
            return "⚠️ Type or choose a run id first."
        record = w.check(viewer, run_id.strip())
        if action == "cancel":
            if record.status not in ACTIVE:
                return f"⚠️ Run `{record.id}` has already ended ({record.status}): nothing to cancel. It stays stored."
            session = ctx.sessions.get(record.id)
            if w.queue.owner_of(record.id) is None and session is not None:
                session.stop()
                return f"Stopping run `{record.id}`."
            return w.queue.cancel(record.id)
        w.queue.move(record.id, int(position or 1))
        return f"Moved run `{record.id}` to place {int(position or 1)}."
    except Exception as err:  # noqa: BLE001 - a message, never a traceback
        return error_text(err)


def build_tab(ctx) -> dict[str, Any]:
    """The Workshop tab (inside ``gr.Tab``): the queue, the instructor's controls, the class view."""
    import gradio as gr

    w = ctx.workshop
    line = gr.Markdown("", elem_id="workshop-queue-line")
    table = gr.Dataframe(
        headers=["place", "run", "participant", "when"],
        interactive=False,
        label="The queue (round-robin across participants)",
        elem_id="workshop-queue",
    )
    refresh = gr.Button("Refresh", size="sm", elem_id="workshop-refresh")
    with gr.Group(visible=False) as controls:
        gr.Markdown("**Instructor**")
        with gr.Row():
            pause = gr.Button("Pause queue", elem_id="workshop-pause")
            resume = gr.Button("Resume queue", elem_id="workshop-resume")
        with gr.Row():
            run_box = gr.Textbox(label="Run id", elem_id="workshop-run", scale=3)
            place = gr.Number(1, label="Place", precision=0, minimum=1, elem_id="workshop-place", scale=1)
            move = gr.Button("Move to place", elem_id="workshop-move", scale=1)
            cancel = gr.Button("Cancel / stop", variant="stop", elem_id="workshop-cancel", scale=1)
        with gr.Row():
            anonymous = gr.Checkbox(w.anonymous, label="Anonymise names in the class view", elem_id="workshop-anon")
            target = gr.Number(w.target_epsilon, label="Target ε for 'best at'", elem_id="workshop-target")
    message = gr.Markdown("", elem_id="workshop-message")
    gr.Markdown("### Class view: the shared dataset's privacy–utility frontier")
    frontier = gr.Plot(elem_id="workshop-frontier", show_label=False)
    summary = gr.Markdown("", elem_id="workshop-class")

    @takes_request
    def show(request=None):
        user = user_of(request)
        fig, text = class_summary(ctx, user)
        return (queue_line(ctx, user), queue_rows(ctx, user), gr.update(visible=w.is_instructor(user)), fig, text)

    outputs = [line, table, controls, frontier, summary]
    hidden = dict(api_visibility="private", show_progress="hidden")
    refresh.click(show, None, outputs, **hidden)

    def act(action):
        @takes_request
        def fn(run_id, position, request=None):
            return instructor_action(ctx, user_of(request), action, run_id, position)

        return fn

    for button, action in ((pause, "pause"), (resume, "resume"), (move, "move"), (cancel, "cancel")):
        button.click(act(action), [run_box, place], message, api_visibility="private").then(
            show, None, outputs, **hidden
        )

    @takes_request
    def settings(anon, eps, request=None):
        if not w.is_instructor(user_of(request)):
            return "⚠️ Only the instructor changes the class view's settings."
        w.anonymous = bool(anon)
        if eps is not None and float(eps) > 0:
            w.target_epsilon = float(eps)
        return ""

    for comp in (anonymous, target):
        comp.change(settings, [anonymous, target], message, api_visibility="private").then(
            show, None, outputs, **hidden
        )
    return {"show": show, "outputs": outputs, "refresh": refresh}
