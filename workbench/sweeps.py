"""Sweeps: the cross product of a grid of settings times seeds, stored as one group and run one by one.

    workbench sweep --config run.yaml --grid target_epsilon=2,4,8 --grid max_grad_norm=0.1,1 --seeds 3
    workbench sweep resume NAME          # trains again what did not finish
    workbench.sweep("run.yaml", grid={"target_epsilon": [2, 4, 8]}, seeds=3)    # in a notebook

Everything is validated before anything trains: unknown keys, values of the wrong type (every value
is coerced through ``RunConfig``), empty lists, and combinations the config rejects (each reported
with its combination). Each member's run gets a readable, unique name from what differs
(``eps4-C0.1-s1``). The sweep and its members are stored in the run store (``store/sweeps.py``)
before the first run starts, and each member is linked to its run before that run trains, so a
sweep killed at any point resumes without training a finished member again.

Tuning mode (``tuning="poisson"|"geometric"|"logarithmic"|"truncated_negative_binomial"`` with
``mean_runs``): the number of runs K is drawn once, before any run, from that distribution with
secret randomness (a ChaCha20 stream keyed from the OS, never the public seed), and each run's
settings are drawn uniformly from the grid's combinations with the same stream; the privacy ledger
records the runs as one tuning session with the distribution and its parameters, and the DP event of
every combination (``tuning_candidates``, stored before the draw), so it reports the
``RepeatAndSelect`` bound of releasing only the best run over every setting the session could draw
(Papernot and Steinke 2022; ``privacy/tuning.py``). Every one of the K runs counts: on resume a
tuning run that took a step is not trained again (its output, even a failure, is one of the K draws).

``workbench.sweep(...)`` (the package's lazy attribute) is ``run_sweep(...)``.
"""

from __future__ import annotations

import itertools
import math
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import yaml

from workbench.config import GROUPS, ConfigError, RunConfig
from workbench.errors import UserError
from workbench.store.names import ABBREVIATIONS, format_value, run_label  # noqa: F401 (re-exported)
from workbench.store.runs import RunStore
from workbench.store.sweeps import DONE, Member, SweepRecord, SweepStore

TUNING_DISTRIBUTIONS = ("poisson", "geometric", "logarithmic", "truncated_negative_binomial")
NOT_SWEPT = ("name", "output_dir")  # the sweep names its runs and gives each its own folder
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class SweepError(UserError, ValueError):
    """A sweep that cannot be run as asked; the message lists every problem found."""


@dataclass(frozen=True)
class Tuning:
    """Tuning mode: the distribution of the number of runs, its mean and shape (RepeatAndSelect's)."""

    distribution: str
    mean: float
    shape: float

    def to_dict(self) -> dict[str, Any]:
        return {"distribution": self.distribution, "mean": self.mean, "shape": self.shape}


# -- parsing and expansion --------------------------------------------------------------------------


def parse_grid(items: Iterable[str] | Mapping[str, Sequence[Any]] | None) -> list[tuple[str, list[Any]]]:
    """``["key=v1,v2", ...]`` (values parsed as YAML, as ``--set`` does) or ``{key: [v1, v2]}`` -> [(key, values)].

    Keys may be dotted (``privacy.target_epsilon``), flat, or a group mapping (``{"lora": {"r": [4, 8]}}``); they
    come back as the config's field names, as the stored runs' configs hold them (unknown keys as written).

    >>> parse_grid(["privacy.target_epsilon=4,8", "allocation=uniform,adaptive"])
    [('target_epsilon', [4, 8]), ('allocation', ['uniform', 'adaptive'])]
    """
    if not items:
        return []
    pairs: list[tuple[str, list[Any]]] = []
    if isinstance(items, Mapping):
        for key, values in _grouped_items(items):
            if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
                values = [values]
            pairs.append((_field(key), list(values)))
    else:
        for item in items:
            if "=" not in item:
                raise SweepError(f"--grid {item!r} is not key=v1,v2,..., e.g. --grid privacy.target_epsilon=2,4,8.")
            key, raw = item.split("=", 1)
            values = [_parse_value(v) for v in raw.split(",") if v.strip()]
            pairs.append((_field(key), values))
    return pairs


def _grouped_items(data: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """A group's mapping (``lora: {r: [4, 8]}``) as dotted keys (``lora.r``); other keys as they are."""
    out: list[tuple[str, Any]] = []
    for key, values in data.items():
        if str(key) in GROUPS and isinstance(values, Mapping):
            out.extend((f"{key}.{sub}", v) for sub, v in values.items())
        else:
            out.append((str(key), values))
    return out


def _field(key: str) -> str:
    key = key.strip().replace("-", "_")
    return RunConfig.field_name(key) or key


def grid_from_file(path: str | Path) -> list[str]:
    """A sweep file (YAML or JSON: ``{setting: [values]}``) as ``--grid`` items; SweepError names what is wrong."""
    path = Path(path)
    if not path.exists():
        raise SweepError(f"sweep file {path} does not exist. Check the path.")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise SweepError(f"sweep file {path} is not valid YAML/JSON: {err}") from None
    if not isinstance(data, dict):
        raise SweepError(
            f"sweep file {path} must map settings to lists of values, e.g. privacy: {{target_epsilon: [2, 4, 8]}}."
        )
    items = []
    for key, values in _grouped_items(data):
        values = values if isinstance(values, list) else [values]
        if any(isinstance(v, (dict, list)) for v in values):
            raise SweepError(f"sweep file {path}: {key} must be a list of plain values. Found {values!r}.")
        items.append(f"{key}=" + ",".join("null" if v is None else str(v) for v in values))
    return items


def _parse_value(text: str) -> Any:
    text = text.strip()
    if text.lower() in ("none", "null"):
        return None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def parse_seeds(seeds: int | str | Sequence[int] | None, base_seed: int) -> list[int]:
    """None -> the config's seed; a count n -> n seeds from the config's; '0,4,7' or a list -> those.

    >>> parse_seeds(3, 0), parse_seeds("5,9", 0), parse_seeds(None, 2)
    ([0, 1, 2], [5, 9], [2])
    """
    if seeds is None:
        return [base_seed]
    if isinstance(seeds, str):
        text = seeds.strip()
        try:
            values = [int(v) for v in text.split(",") if v.strip()] if "," in text else None
            count = int(text) if values is None else None
        except ValueError:
            raise SweepError(f"--seeds must be a count (3) or a list of seeds (0,4,7). Found {seeds!r}.") from None
        if values is not None:
            seeds = values
        else:
            seeds = count
    if isinstance(seeds, bool):
        raise SweepError(f"seeds must be a count or a list of integers. Found {seeds!r}.")
    if isinstance(seeds, int):
        if seeds < 1:
            raise SweepError(f"--seeds must be at least 1. Found {seeds}.")
        return [base_seed + i for i in range(seeds)]
    out = list(seeds)
    if not out or not all(isinstance(s, int) and not isinstance(s, bool) for s in out):
        raise SweepError(f"seeds must be a count or a non-empty list of integers. Found {seeds!r}.")
    if len(set(out)) != len(out):
        raise SweepError(f"seeds must be distinct. Found {out}.")
    return out


def _coerced(cfg: RunConfig, key: str) -> Any:
    return cfg.to_dict()[key]


def validate(
    base: RunConfig, grid: Sequence[tuple[str, list[Any]]], seeds: Sequence[int]
) -> list[tuple[str, dict[str, Any]]]:
    """Every combination of ``grid`` times ``seeds`` as (label, overrides), values coerced through RunConfig.

    Raises SweepError listing every problem: unknown or repeated keys, empty lists, values of the wrong
    type, and each combination the config rejects with its label.
    """
    problems: list[str] = []
    seen: set[str] = set()
    coerced: list[tuple[str, list[Any]]] = []
    for key, values in grid:
        if key in seen:
            problems.append(f"grid key {key!r} is given twice: put all its values in one --grid {key}=v1,v2.")
            continue
        seen.add(key)
        if key not in RunConfig.model_fields:
            problems.append(f"unknown config key {key!r} in the grid. Run `workbench train --help-keys` for the list.")
            continue
        if key in NOT_SWEPT:
            problems.append(f"{key!r} cannot be swept: the sweep names its runs and gives each its own folder.")
            continue
        if key == "seed" and seeds is not None and len(seeds) > 1:
            problems.append("seed is both in the grid and in --seeds: use one of them.")
            continue
        if not values:
            problems.append(f"grid key {key!r} has no values: give at least one, e.g. --grid {key}=v1,v2.")
            continue
        good = []
        for value in values:
            try:
                good.append(_coerced(base.with_overrides({key: value}), key))
            except ConfigError as err:
                problems.append(f"grid {key}={value!r}: {err}")
        if len({repr(v) for v in good}) != len(good):
            problems.append(f"grid key {key!r} repeats a value: {good}.")
        coerced.append((key, good))
    if problems:
        raise SweepError(_problems(problems))
    keys = [k for k, _ in coerced]
    seed_key = ["seed"] if len(seeds) > 1 else []
    members: list[tuple[str, dict[str, Any]]] = []
    for combo in itertools.product(*[v for _, v in coerced]):
        for seed in seeds:
            overrides = dict(zip(keys, combo))
            if "seed" not in overrides:
                overrides["seed"] = seed
            label = run_label(overrides, keys + seed_key)
            try:
                base.with_overrides(overrides)
            except ConfigError as err:
                problems.append(f"combination {label} ({_settings_text(overrides, keys)}): {err}")
                continue
            members.append((label, overrides))
    if problems:
        raise SweepError(_problems(problems))
    return _unique(members)


def _settings_text(overrides: Mapping[str, Any], keys: Sequence[str]) -> str:
    return ", ".join(f"{k}={overrides[k]!r}" for k in keys) or "the base config"


def _unique(members: list[tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    counts: dict[str, int] = {}
    out = []
    for label, overrides in members:
        n = counts[label] = counts.get(label, 0) + 1
        out.append((label if n == 1 else f"{label}-{n}", overrides))
    return out


def _problems(problems: list[str]) -> str:
    if len(problems) == 1:
        return problems[0]
    return f"{len(problems)} problems with the sweep:\n" + "\n".join(f"  - {p}" for p in problems)


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise SweepError(
            f"a sweep name is 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit. Found {name!r}."
        )
    return name


# -- tuning mode -----------------------------------------------------------------------------------


def tuning_of(distribution: str, mean_runs: float | None, shape: float | None = None) -> Tuning:
    """Check tuning mode's settings: a known distribution, a mean >= 1 (and a shape for the TNB)."""
    from workbench.privacy.accountants import PrivacyError
    from workbench.privacy.tuning import shape_of

    if distribution not in TUNING_DISTRIBUTIONS:
        raise SweepError(f"--tuning must be one of {', '.join(TUNING_DISTRIBUTIONS)}. Found {distribution!r}.")
    if mean_runs is None:
        raise SweepError(f"--tuning {distribution} needs --mean-runs K, the expected number of runs (e.g. 10).")
    if isinstance(mean_runs, bool) or not isinstance(mean_runs, (int, float)) or not math.isfinite(mean_runs):
        raise SweepError(f"--mean-runs must be a number >= 1. Found {mean_runs!r}.")
    if mean_runs < 1:
        raise SweepError(f"--mean-runs must be at least 1. Found {mean_runs}.")
    if distribution == "truncated_negative_binomial" and shape is None:
        shape = 0.5
    try:
        value = shape_of(distribution, shape)
    except PrivacyError as err:
        raise SweepError(str(err)) from None
    return Tuning(distribution, float(mean_runs), value)


def secret_generator():
    """A ChaCha20 stream keyed with 256 bits from the OS (``engine.randomness.stream``, the runs' own
    construction): never from the public seed, and the key is never stored."""
    from workbench.engine.randomness import stream

    return stream(secrets.token_bytes(32))


def draw_runs(tuning: Tuning, rng=None) -> int:
    """The number of runs, drawn from ``tuning``'s distribution (RepeatAndSelect's parametrisation by its mean:
    Poisson(mean) may be 0; the truncated negative binomial family, geometric and logarithmic included, is >= 1)."""
    from dp_accounting.rdp.rdp_privacy_accountant import _gamma_truncated_negative_binomial

    rng = rng if rng is not None else secret_generator()
    if math.isinf(tuning.shape):
        return int(rng.poisson(tuning.mean))
    gamma = _gamma_truncated_negative_binomial(tuning.shape, tuning.mean)
    if tuning.shape == 1:
        return int(rng.geometric(gamma))  # P(k) = gamma (1 - gamma)^(k-1), k >= 1
    if tuning.shape == 0:
        return int(rng.logseries(1 - gamma))  # P(k) proportional to (1 - gamma)^k / k, k >= 1
    for _ in range(100_000):  # NB(shape, gamma) conditioned on k >= 1
        k = int(rng.negative_binomial(tuning.shape, gamma))
        if k >= 1:
            return k
    raise SweepError("could not draw a positive number of runs; use a larger --mean-runs.")


def _tuning_seeds(rng, k: int) -> list[int]:
    """``k`` distinct seeds for the runs of a tuning session, from its secret stream (a seed of base + i would
    number the runs, and the number drawn is part of what the RepeatAndSelect bound keeps secret)."""
    seeds: list[int] = []
    while len(seeds) < k:
        seed = int(rng.integers(2**31))
        if seed not in seeds:
            seeds.append(seed)
    return seeds


# -- planning --------------------------------------------------------------------------------------


def _base_config(config: RunConfig | dict | str | Path | None, overrides: Mapping[str, Any] | None) -> RunConfig:
    try:
        if config is None:
            cfg = RunConfig()
        elif isinstance(config, RunConfig):
            cfg = config
        elif isinstance(config, dict):
            cfg = RunConfig.from_dict(config)
        else:
            cfg = RunConfig.from_file(config)
        return cfg.with_overrides(dict(overrides)) if overrides else cfg
    except ConfigError as err:
        raise SweepError(str(err)) from None


def default_name() -> str:
    return time.strftime("sweep-%Y%m%d-%H%M%S")


def create_sweep(
    config: RunConfig | dict | str | Path | None = None,
    *,
    grid: Iterable[str] | Mapping[str, Sequence[Any]] | None = None,
    seeds: int | str | Sequence[int] | None = None,
    name: str | None = None,
    tuning: str | None = None,
    mean_runs: float | None = None,
    tuning_shape: float | None = None,
    store: RunStore | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> SweepRecord:
    """Validate and store a sweep (nothing trains yet); SweepError says what is wrong."""
    base = _base_config(config, overrides)
    name = _check_name(name or default_name())
    sweeps = SweepStore(store)
    if sweeps.exists(name):
        raise SweepError(
            f"a sweep named {name!r} exists: `workbench sweep resume {name}` continues it, or choose another --name."
        )
    pairs = parse_grid(grid)
    plan_tuning = tuning_of(tuning, mean_runs, tuning_shape) if tuning is not None else None
    if plan_tuning is not None and seeds is not None:
        raise SweepError("--seeds does not apply in tuning mode: each of the drawn runs gets its own seed.")
    seed_list = parse_seeds(seeds, base.seed)
    if not pairs and len(seed_list) == 1 and plan_tuning is None:
        raise SweepError("the grid is empty: give at least one --grid key=v1,v2 or --seeds 2 or more.")
    combos = validate(base, pairs, seed_list if plan_tuning is None else [base.seed])
    tuning_record = None
    if plan_tuning is not None:
        # every setting the session could draw, for its bound (the ledger's), stored before any draw or run
        from workbench.engine.data import DataError
        from workbench.store.ledger import Ledger

        try:
            candidates = tuning_candidates(base, combos)
        except (DataError, OSError) as err:
            raise SweepError(str(err)) from None
        Ledger(sweeps.store).set_tuning_candidates(name, candidates)
        rng = secret_generator()
        k = draw_runs(plan_tuning, rng)
        keys = [key for key, _ in pairs]
        members = []
        seeds_i = _tuning_seeds(rng, k)
        for i in range(k):
            label, overrides_i = combos[int(rng.integers(len(combos)))]
            # the split's salt stays the session's, so every draw trains on the same units (RepeatAndSelect's
            # assumption); each run's own seed (initialisation, dropout) comes from the secret stream, not base + i
            overrides_i = {**overrides_i, "split_seed": base.split_salt, "seed": seeds_i[i]}
            # a random tag, not the draw's position: a name like t03 (exported in config.json) would reveal that
            # at least 3 runs were drawn, the count RepeatAndSelect's bound keeps secret
            tag = f"t{int(rng.integers(16**6)):06x}"
            while any(m.startswith(tag) for m, _ in members):
                tag = f"t{int(rng.integers(16**6)):06x}"
            members.append((tag + (f"-{label}" if keys else ""), overrides_i))
        tuning_record = {**plan_tuning.to_dict(), "runs": k}
    else:
        members = combos
    base_dict = base.to_dict()
    try:
        return sweeps.create(
            name, base_config=base_dict, grid=pairs, seeds=seed_list, members=members, tuning=tuning_record
        )
    except ValueError as err:
        raise SweepError(f"{err}: `workbench sweep resume {name}` continues it, or choose another --name.") from None


@dataclass(frozen=True)
class SweepCost:
    """What a sweep's runs cost together if each trains its planned steps (before anything trains).

    ``epsilon``: the PLD composition of every run's planned DP event at the largest delta, the privacy
    ledger's own total (``store.ledger.compose_entries``): what releasing all the runs, or choosing one by a
    metric computed on the private data, costs at most. None with ``note`` when the runs cannot be composed."""

    runs: int
    per_run: float  # the largest planned epsilon of one run
    epsilon: float | None
    delta: float | None
    neighboring: str | None
    note: str | None = None


def _dataset_size(cfg: RunConfig) -> tuple[int, int | None]:
    """(training examples after the per-user cap, users) as the run will count them (``prepare.dataset_sizes``)."""
    from workbench.engine.prepare import dataset_sizes

    return dataset_sizes(cfg)


def planned_cost(
    base: RunConfig,
    members: Sequence[tuple[str, Mapping[str, Any]]],
    *,
    sizes: Callable[[RunConfig], tuple[int, int | None]] | None = None,
) -> SweepCost:
    """The privacy cost of training every member of ``members`` ((label, overrides) from ``validate``) to its
    planned length: each run's plan (``planning.make_plan``: sigma calibrated as the run will calibrate it)
    gives its DP event, and the events compose with PLD as the ledger composes stored runs. ``sizes(config)``:
    (training examples, users) of a run's data (default: load the data). SweepError names a combination whose
    plan fails (a batch larger than the data, a target epsilon out of reach)."""
    from workbench.privacy.accountants import PrivacyError
    from workbench.privacy.dp_events import common_relation, composed_epsilon

    events, epsilons, deltas, relations = [], [], [], []
    for event, eps, delta, relation in _planned(base, members, sizes):
        events.append(event)
        epsilons.append(eps)
        deltas.append(delta)
        relations.append(relation)
    if not events:
        return SweepCost(0, 0.0, 0.0, 0.0, None)
    delta = max(deltas)
    try:
        neighboring, note = common_relation(relations, events)
    except PrivacyError as err:
        return SweepCost(len(events), max(epsilons), None, delta, None, str(err))
    total = composed_epsilon(events, delta=delta, neighboring=neighboring)
    return SweepCost(len(events), max(epsilons), total, delta, neighboring, note)


# the settings that decide a run's training set size (``_dataset_size``)
_DATA_KEYS = (
    "data",
    "columns",
    "validation_data",
    "validation_fraction",
    "seed",
    "split_seed",
    "labels",
    "privacy_unit",
    "max_examples_per_user",
)


def _planned(
    base: RunConfig,
    members: Sequence[tuple[str, Mapping[str, Any]]],
    sizes: Callable[[RunConfig], tuple[int, int | None]] | None = None,
) -> list[tuple[Any, float, float, str]]:
    """(DP event at the planned length, planned epsilon, delta, relation) of each member's plan (``planned_cost``)."""
    from dp_accounting import dp_event

    from workbench.planning.plan import make_plan
    from workbench.privacy.accountants import PrivacyError

    sizes = sizes or _dataset_size
    counted: dict[str, tuple[int, int | None]] = {}
    planned: dict[tuple, tuple[Any, float, float, str]] = {}
    out = []
    for label, overrides in members:
        cfg = base.with_overrides(dict(overrides))
        d = cfg.to_dict()
        data_key = repr([d[k] for k in _DATA_KEYS])
        if data_key not in counted:  # the data is loaded once per data setting
            counted[data_key] = sizes(cfg)
        n, users = counted[data_key]
        key = (repr(sorted({**cfg.to_dict(), "seed": 0, "name": None, "output_dir": None}.items())), n, users)
        if key not in planned:  # seeds of one setting share a plan: one calibration
            try:
                plan = make_plan(cfg, dataset_size=n, num_users=users)
            except (ConfigError, PrivacyError) as err:
                raise SweepError(f"combination {label}: {err}") from None
            if not plan.private or cfg.noise_seed is not None:
                planned[key] = (dp_event.NonPrivateDpEvent(), math.inf, plan.delta, plan.neighboring)
            else:
                eps = plan.target_epsilon if plan.target_epsilon is not None else plan.epsilon_at(plan.steps)
                planned[key] = (plan.dp_event(plan.steps), eps, plan.delta, plan.neighboring)
        out.append(planned[key])
    return out


def tuning_candidates(
    base: RunConfig,
    combos: Sequence[tuple[str, Mapping[str, Any]]],
    *,
    sizes: Callable[[RunConfig], tuple[int, int | None]] | None = None,
) -> list[Any]:
    """The DP events of every setting a tuning session can draw (``combos`` from ``validate``), each run's plan
    at its planned length as ``planned_cost`` makes it: the RepeatAndSelect bound is over all of them
    (``privacy.tuning.repeat_and_select_epsilon``), not only those drawn. SweepError names a combination whose
    plan fails."""
    from workbench.privacy.dp_events import event_to_json

    events = [event for event, *_ in _planned(base, combos, sizes)]
    return list({event_to_json(e): e for e in events}.values())


# -- running ---------------------------------------------------------------------------------------


@dataclass
class Progress:
    """What a progress callback receives after each run: ``done`` of ``total`` runs, this run, an estimate."""

    sweep: str
    done: int
    total: int
    label: str
    run_id: str
    status: str
    summary: dict[str, Any]
    seconds: float
    remaining_seconds: float | None


def pending(sweeps: SweepStore, rec: SweepRecord) -> list[Member]:
    """The members to train: never started, or whose run did not finish (killed, failed, stopped, deleted
    before it finished). In tuning mode only those whose run took no step (every drawn run counts)."""
    out = []
    ledger_ids = _ledger_ids(sweeps.store) if rec.tuning else set()
    for m in rec.members:
        status = sweeps.status(m)
        if status in (DONE, "running", "queued"):
            continue
        if rec.tuning and any(a in ledger_ids for a in (m.run_id, *m.attempts) if a):
            continue
        out.append(m)
    return out


def _ledger_ids(store: RunStore) -> set[str]:
    from workbench.store.ledger import Ledger

    return {e.run_id for e in Ledger(store).entries(include_forgotten=True)}


def member_config(rec: SweepRecord, member: Member) -> RunConfig:
    base = RunConfig.from_dict(rec.base_config)
    extra: dict[str, Any] = {"name": member.label}
    if base.output_dir:
        extra["output_dir"] = str(Path(base.output_dir) / rec.name / member.label)
    return base.with_overrides({**member.overrides, **extra})


def train_member(
    store: RunStore, name: str, member: Member, *, subscribers: tuple = (), stop=None, on_session=None
) -> tuple[str, dict[str, Any]]:
    """Train one member in this thread: link it to its run first, record how it ended. Returns (run id, summary).
    ``on_session(session)`` is called just before it trains (the app keeps it, to stop it)."""
    from workbench.session import Session

    sweeps = SweepStore(store)
    rec = sweeps.get(name)
    session = Session(member_config(rec, member), store=store, subscribers=subscribers, name=member.label)
    sweeps.start_member(name, member.index, session.run_id)
    if stop is not None:
        stop.append(session)
    if on_session is not None:
        on_session(session)
    summary = session.run()
    status = summary.get("status", "failed")
    sweeps.end_member(name, member.index, status)
    if rec.tuning:
        _record_tuning(store, rec, session.run_id)
    return session.run_id, summary


def _record_tuning(store: RunStore, rec: SweepRecord, run_id: str) -> None:
    """Mark the run in the privacy ledger as one of the tuning session's draws (a run that took no step has no row)."""
    from workbench.store.ledger import Ledger, LedgerError

    t = rec.tuning or {}
    try:
        Ledger(store).set_tuning(
            [run_id], session=rec.name, distribution=t["distribution"], mean=t["mean"], shape=t["shape"]
        )
    except LedgerError:
        pass


def _worker(home: str, name: str, index: int, threads: int) -> tuple[str, dict[str, Any]]:
    """One member in a separate process (``parallel`` > 1)."""
    import os
    import warnings

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore")
    import torch

    torch.set_num_threads(max(1, threads))
    store = RunStore(home)
    member = next(m for m in SweepStore(store).get(name).members if m.index == index)
    run_id, summary = train_member(store, name, member)
    keep = ("status", "reason", "epsilon", "val_loss", "accuracy", "perplexity", "steps", "wall_time")
    return run_id, {k: summary.get(k) for k in keep}


def execute(
    name: str,
    *,
    store: RunStore | None = None,
    parallel: int = 1,
    progress: Callable[[Progress], None] | None = None,
    subscribers: Callable[[Member], tuple] | None = None,
    on_session: Callable[[Any], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> SweepRecord:
    """Train the sweep's pending members (sequentially, or in ``parallel`` CPU processes); returns the sweep.

    Sequential only: ``on_session(session)`` is called before each member's Session trains, and ``should_stop()``
    before each member starts (True: the rest stay pending, for ``resume``)."""
    store = store or RunStore()
    sweeps = SweepStore(store)
    rec = sweeps.get(name)
    todo = pending(sweeps, rec)
    total, done0 = len(rec.members), len(rec.members) - len(todo)
    if parallel < 1:
        raise SweepError(f"--parallel must be at least 1. Found {parallel}.")
    if parallel > 1 and _device(rec) != "cpu":
        parallel = 1  # one run per device: the GPU trains one member at a time
    started = time.monotonic()

    def report(i: int, member: Member, run_id: str, summary: dict, seconds: float) -> None:
        left = len(todo) - i  # the estimate of what is left: the speed of the runs so far
        per_run = (time.monotonic() - started) / i
        if progress is not None:
            progress(
                Progress(
                    name,
                    done0 + i,
                    total,
                    member.label,
                    run_id,
                    summary.get("status", "failed"),
                    summary,
                    seconds,
                    per_run * left if left else None,
                )
            )

    if parallel == 1:
        for i, member in enumerate(todo, 1):
            if should_stop is not None and should_stop():
                break
            t0 = time.monotonic()
            run_id, summary = train_member(
                store, name, member, subscribers=subscribers(member) if subscribers else (), on_session=on_session
            )
            report(i, member, run_id, summary, time.monotonic() - t0)
    else:
        import multiprocessing
        import os
        from concurrent.futures import ProcessPoolExecutor, as_completed

        threads = max(1, (os.cpu_count() or 1) // parallel)
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=parallel, mp_context=ctx) as pool:
            futures = {pool.submit(_worker, str(store.home), name, m.index, threads): m for m in todo}
            for i, fut in enumerate(as_completed(futures), 1):
                member = futures[fut]
                run_id, summary = fut.result()
                report(i, member, run_id, summary, float(summary.get("wall_time") or 0.0))
    return sweeps.get(name)


def _device(rec: SweepRecord) -> str:
    device = rec.base_config.get("device", "auto")
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


__all__ = [
    "SweepError",
    "Tuning",
    "Progress",
    "parse_grid",
    "grid_from_file",
    "parse_seeds",
    "run_label",
    "validate",
    "planned_cost",
    "tuning_candidates",
    "SweepCost",
    "tuning_of",
    "draw_runs",
    "create_sweep",
    "execute",
    "pending",
]
