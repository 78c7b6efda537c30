"""The adapter in PEFT format, with the privacy report (JSON) and the model card's DP section.

Everything here is exported with the adapter, so it holds only what may be published: the
mechanism's public settings and the epsilon. Never the randomness key (randomness.py), never an
absolute path of the training machine, and the dataset's size only as the neighbouring relation
allows (exact under replace_one, the declared public size under add_remove: plan.py).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workbench.engine.models import BASE_SOURCE, base_model_name
from workbench.engine.randomness import SEEDED_LABEL
from workbench.planning.wording import relation_text

if TYPE_CHECKING:
    from workbench.engine.prepare import Prepared

CARD_START = "<!-- dp-workbench: differential privacy -->"
CARD_END = "<!-- /dp-workbench -->"
STOP_NOTE = (
    "A run stopped by hand claims the planned epsilon (the full schedule's): it covers a stop decided from the "
    "released adapter states or public information. The smaller epsilon of the steps done holds only if the stop "
    "used public information only (a clock, a fixed plan). A stop decided from the training telemetry (losses, "
    "gradient norms, validation metrics on private data) is covered by no epsilon: the stopping step itself can "
    "reveal what that telemetry showed."
)


def _finite(x: float | None) -> float | str | None:
    return x if x is None or math.isfinite(x) else "inf"


def published_sizes(prepared: "Prepared") -> dict[str, Any]:
    """The dataset sizes the report may publish: the plan's public population (the declared public size under
    add_remove, the exact one under replace_one), and the number of users only where it is that population
    (ULS) or public by the relation (replace_one); under add_remove a count of users is private, so none."""
    plan = prepared.plan
    uls = plan.privacy_unit == "user" and plan.user_sampling == "uls"
    exact = plan.neighboring == "replace_one"
    examples = plan.published_population if not uls else None  # under ULS the examples per user vary
    users = plan.published_population if uls else (plan.num_users if exact else None)
    return {"dataset_size": examples, "num_users": users, "dataset_size_published_as": plan.size_published_as}


def privacy_report(
    prepared: "Prepared",
    *,
    steps_done: int,
    epsilon: float,
    stopped: bool = False,
    seeded: bool = False,
    extra: dict | None = None,
) -> dict[str, Any]:
    plan, cfg = prepared.plan, prepared.config
    planned = plan.epsilon_at(plan.steps) if plan.private else math.inf
    comparison = plan.comparison_epsilon_at(steps_done)
    report = {
        **(extra or {}),
        **plan.user_level_report(steps_done),
        "epsilon": _finite(epsilon),
        "planned_epsilon": _finite(planned),
        "stopped_early": stopped,
        "delta": plan.delta,
        "neighboring": plan.neighboring,
        "accountant": plan.accountant,
        "accountant_is_approximation": False,  # upper bounds decide (plan.py)
        "randomness": SEEDED_LABEL if seeded else "secret: a fresh key from the OS per run, never exported",
        "seeded_randomness": seeded,
        "mechanism": "DP-SGD: Poisson-subsampled Gaussian mechanism" if plan.private else "none (non-private)",
        "sampling": "poisson" + (" over users" if plan.user_sampling == "uls" else " over examples"),
        "sample_rate": plan.sample_rate,
        "expected_batch_size": cfg.batch_size,
        "privacy_unit": cfg.privacy_unit,
        "user_sampling": plan.user_sampling,
        "max_examples_per_user": plan.max_examples_per_user,
        **published_sizes(prepared),
        "max_grad_norm": plan.max_grad_norm,
        "clipping": f"per-{'user (mean of its examples)' if plan.user_sampling == 'uls' else 'example'}, "
        f"{cfg.resolved_clipping if cfg.max_grad_norm is not None else 'none'}",
        "allocation": cfg.allocation,
        "noise_multiplier": plan.noise_multiplier,
        "steps": steps_done,
        "planned_steps": plan.steps,
        "target_epsilon": plan.target_epsilon,
        "dataset": Path(prepared.train.name).name,
        "model": prepared.model_name if not Path(prepared.model_name).is_absolute() else Path(prepared.model_name).name,
        "base_model": base_model_name(prepared.model_name),
        "base_model_source": BASE_SOURCE.get(prepared.model_name, base_model_name(prepared.model_name)),
        "trainable": "LoRA adapters" + (" and the classification head" if prepared.task == "classification" else ""),
    }
    if comparison is not None:
        report["edgeworth_epsilon"] = comparison
        report["edgeworth_note"] = "Edgeworth approximation for comparison, not an upper bound; epsilon above is PLD's"
    if stopped and plan.private and steps_done:
        report["steps_done_epsilon"] = _finite(plan.epsilon_at(steps_done))  # only if the stop used public info only
        report["stop_note"] = STOP_NOTE
    return report


def _eps_text(x: Any) -> str:
    return x if isinstance(x, str) else f"{x:.4g}"


def model_card_section(report: dict[str, Any]) -> str:
    private = report["noise_multiplier"] > 0
    sizes = []
    if report.get("dataset_size") is not None:
        sizes.append(f"{report['dataset_size']} examples")
    if report.get("num_users") is not None:
        sizes.append(f"{report['num_users']} users")
    size_text = (", ".join(sizes) or "not published") + f" ({report['dataset_size_published_as']})"
    lines = [CARD_START, "## Differential privacy", ""]
    if report.get("seeded_randomness"):
        lines += [
            f"**Warning: {SEEDED_LABEL}.** The sampling and the noise were drawn from a public seed "
            "(`noise_seed`): anyone with it can replay them, so the epsilon below does not hold.",
            "",
        ]
    lines += [
        "This adapter was trained with differentially private SGD (DP-SGD) by DP Workbench."
        if private
        else "This adapter was trained WITHOUT differential privacy (non-private baseline).",
        "",
        "| | |",
        "|---|---|",
        f"| epsilon | {_eps_text(report['epsilon'])} "
        + ("(planned: the run was stopped by hand) |" if "steps_done_epsilon" in report else "(steps done) |"),
        f"| planned epsilon | {_eps_text(report['planned_epsilon'])} ({report['planned_steps']} steps) |",
        f"| delta | {report['delta']:.3g} |",
        f"| neighbouring datasets | {relation_text(report['neighboring'], report['privacy_unit'])} |",
        f"| accountant | {report['accountant']} (upper bound) |",
        f"| randomness | {report['randomness']} |",
        f"| sampling | {report['sampling']}, rate q = {report['sample_rate']:.5g} |",
        f"| unit of privacy | one {report['privacy_unit']}"
        + (
            f" (at most {report['max_examples_per_user']} examples each, {report['user_sampling'].upper()})"
            if report.get("user_sampling")
            else ""
        )
        + " |",
        f"| clipping norm C | {report['max_grad_norm']} |",
        f"| noise multiplier sigma | {report['noise_multiplier']:.5g} |",
        f"| steps | {report['steps']} of {report['planned_steps']} planned |",
        f"| dataset size | {size_text}, {report['dataset']} |",
        f"| base model | {report['base_model']} ({report['base_model_source']}) |",
    ]
    if "steps_done_epsilon" in report:
        lines.append(
            f"| epsilon of the steps done | {_eps_text(report['steps_done_epsilon'])} (holds only if the stop used "
            "public information only) |"
        )
    if report.get("quantile_clipping"):
        qc = report["quantile_clipping"]
        lines.append(
            f"| clip norms | per module, tracking the {qc['quantile']:g} quantile of the norms (Andrew et al. 2021); "
            f"the noised counts take {qc['budget_share']:.3g} of the noise budget, in the same accounting |"
        )
    if "edgeworth_epsilon" in report:
        lines.append(
            f"| Edgeworth epsilon | {_eps_text(report['edgeworth_epsilon'])} (approximation, for comparison) |"
        )
    lines.append("")
    if report.get("audit"):
        lines += [audit_text(report["audit"], claimed=report["epsilon"]), ""]
    if report.get("stop_note"):
        lines += [report["stop_note"], ""]
    lines += [
        "The guarantee covers this adapter, not the training telemetry (loss curves, gradient norms, "
        "validation metrics), which was computed from the raw private data.",
        "",
        CARD_END,
        "",
    ]
    return "\n".join(lines)


def audit_text(audit: dict[str, Any], *, claimed: Any) -> str:
    """The model card's audit line: the empirical lower bound beside the claimed upper bound."""
    return (
        (
            f"empirical lower bound from a one-run audit: {audit['epsilon_lower_bound']:.3g} "
            f"(claimed upper bound: {_eps_text(claimed)}). {audit['canaries']} {audit['kind'].replace('_', ' ')}, "
            f"{audit['correct']} of {audit['guesses']} guesses correct, {audit['confidence']:.0%} confidence "
            "(Steinke, Nasr and Jagielski 2023). A lower bound above the claim would mean the implementation is less "
            "private than its accounting says. The canaries were trained into this adapter: an audit run is for "
            "checking the implementation, not for release."
        )
        + audit_power_text(audit)
        + exposure_text(audit.get("exposure"))
    )


def audit_power_text(audit: dict[str, Any]) -> str:
    """The card's sentence on how to read the bound: interim or not, its power and the epsilon it is compared with."""
    out = ""
    if audit.get("interim"):
        out += " This is an interim reading, not a bound: the run ended before its planned end."
    if audit.get("power") is not None:
        out += f" At these settings the audit could show at most about {audit['power']:.3g}."
    if audit.get("compared_to"):
        eps = audit.get("compared_epsilon")
        out += f" It is compared with {_eps_text(eps)}, {audit['compared_to']}."
    return out


def exposure_text(exposure: list[dict] | None) -> str:
    """The card's exposure sentence (Carlini et al. 2019), or "" when the run measured none."""
    if not exposure:
        return ""
    parts = [
        f"{e['user_id']} {e['exposure']:.3g} (rank {e['rank']}{'' if e['in_training'] else ', not trained on'})"
        for e in exposure
    ]
    return (
        f" Exposure of the demo data's planted secrets, in bits among {exposure[0]['candidates']} random candidates "
        f"of the same format (at most {math.log2(exposure[0]['candidates']):.3g}; about 1 when not memorised): "
        + "; ".join(parts)
        + ". It is computed from the secrets themselves, so, like the telemetry, it is not "
        "covered by the guarantee."
    )


_OLD_SECTION = re.compile(r"\n*## Differential privacy\n.*?(?=\n## |\Z)", re.S)
_OUR_SECTION = re.compile(re.escape(CARD_START) + r".*?" + re.escape(CARD_END) + r"\n*", re.S)


def place_card_section(card: str, section: str) -> str:
    """``card`` with its DP section replaced by ``section``, right after the front matter.

    An older card (a reused output_dir) may hold an earlier run's section, marked or, from
    before the markers, as a plain "## Differential privacy" heading: both are removed.
    """
    card = _OUR_SECTION.sub("", card)
    card = _OLD_SECTION.sub("", card)
    front = re.match(r"---\n.*?\n---\n", card, re.S)
    head, body = (card[: front.end()], card[front.end() :]) if front else ("", card)
    return head + "\n" + section + "\n" + body.lstrip("\n")


def _name_base_model(out_dir: Path, name: str) -> None:
    """Write the portable base-model name into adapter_config.json and the card's metadata.

    Done after ``save_pretrained`` (not before), because peft looks the base model up by that
    name while saving, which for a hub id would try the network.
    """
    config_path = out_dir / "adapter_config.json"
    config = json.loads(config_path.read_text())
    local = config.get("base_model_name_or_path")
    config["base_model_name_or_path"] = name
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True))
    card = out_dir / "README.md"
    if local and card.exists():
        card.write_text(card.read_text().replace(local, name))  # front matter: base_model and its tag


def save_adapter(prepared: "Prepared", *, out_dir: Path, **report_args: Any) -> dict[str, Any]:
    """Save the adapter and tokenizer to ``out_dir`` with privacy_report.json and the model card's privacy section;
    ``report_args`` are ``privacy_report``'s (steps_done, epsilon, stopped, seeded, extra). Returns the report."""
    out_dir.mkdir(parents=True, exist_ok=True)
    prepared.model.save_pretrained(str(out_dir))
    _name_base_model(out_dir, base_model_name(prepared.model_name))
    prepared.tokenizer.save_pretrained(str(out_dir))
    report = privacy_report(prepared, **report_args)
    (out_dir / "privacy_report.json").write_text(json.dumps(report, indent=2))
    card = out_dir / "README.md"
    existing = card.read_text() if card.exists() else f"# LoRA adapter for {report['base_model']}\n"
    card.write_text(place_card_section(existing, model_card_section(report)))
    return report
