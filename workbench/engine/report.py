"""The adapter in PEFT format, with the privacy report (JSON) and a model-card section."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from workbench.engine.models import BASE_SOURCE, base_model_name
from workbench.privacy import is_approximation

if TYPE_CHECKING:
    from workbench.engine.trainer import Prepared


def privacy_report(prepared: "Prepared", *, steps_done: int, epsilon: float, extra: dict | None = None) -> dict[str, Any]:
    plan, cfg = prepared.plan, prepared.config
    return {**(extra or {}), **plan.user_level_report(steps_done),
        "epsilon": epsilon if math.isfinite(epsilon) else "inf",
        "delta": plan.delta,
        "accountant": plan.accountant,
        "accountant_is_approximation": is_approximation(plan.accountant),
        "mechanism": "DP-SGD: Poisson-subsampled Gaussian mechanism" if plan.private else "none (non-private)",
        "sampling": "poisson" + (" over users" if plan.user_sampling == "uls" else " over examples"),
        "sample_rate": plan.sample_rate,
        "expected_batch_size": cfg.batch_size,
        "privacy_unit": cfg.privacy_unit,
        "user_sampling": plan.user_sampling,
        "max_examples_per_user": plan.max_examples_per_user,
        "num_users": plan.num_users,
        "max_grad_norm": plan.max_grad_norm,
        "clipping": f"per-{'user (mean of its examples)' if plan.user_sampling == 'uls' else 'example'}, "
        f"{cfg.resolved_clipping if cfg.max_grad_norm is not None else 'none'}",
        "allocation": cfg.allocation,
        "noise_multiplier": plan.noise_multiplier,
        "steps": steps_done,
        "planned_steps": plan.steps,
        "target_epsilon": plan.target_epsilon,
        "dataset_size": plan.dataset_size,
        "dataset": prepared.train.name,
        "model": prepared.model_name,
        "base_model": base_model_name(prepared.model_name),
        "base_model_source": BASE_SOURCE.get(prepared.model_name, prepared.model_name),
        "trainable": "LoRA adapters" + (" and the classification head" if prepared.task == "classification" else ""),
    }


def model_card_section(report: dict[str, Any]) -> str:
    eps = report["epsilon"]
    approx = " (Edgeworth approximation, not an upper bound)" if report["accountant_is_approximation"] else ""
    lines = [
        "## Differential privacy",
        "",
        f"This adapter was trained with differentially private SGD (DP-SGD) by DP Workbench."
        if report["noise_multiplier"] > 0
        else "This adapter was trained WITHOUT differential privacy (non-private baseline).",
        "",
        "| | |",
        "|---|---|",
        f"| epsilon | {eps if isinstance(eps, str) else f'{eps:.4g}'}{approx} |",
        f"| delta | {report['delta']:.3g} |",
        f"| accountant | {report['accountant']} |",
        f"| sampling | {report['sampling']}, rate q = {report['sample_rate']:.5g} |",
        f"| unit of privacy | one {report['privacy_unit']}"
        + (f" (at most {report['max_examples_per_user']} examples each, {report['user_sampling'].upper()})" if report.get("user_sampling") else "")
        + " |",
        f"| clipping norm C | {report['max_grad_norm']} |",
        f"| noise multiplier sigma | {report['noise_multiplier']:.5g} |",
        f"| steps | {report['steps']} of {report['planned_steps']} planned |",
        f"| dataset size N | {report['dataset_size']} ({report['dataset']}) |",
        f"| base model | {report['base_model']} ({report['base_model_source']}) |",
        "",
    ]
    return "\n".join(lines)


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


def save_adapter(prepared: "Prepared", *, out_dir: Path, steps_done: int, epsilon: float, extra: dict | None = None) -> dict[str, Any]:
    out_dir.mkdir(parents=True, exist_ok=True)
    prepared.model.save_pretrained(str(out_dir))
    _name_base_model(out_dir, base_model_name(prepared.model_name))
    prepared.tokenizer.save_pretrained(str(out_dir))
    report = privacy_report(prepared, steps_done=steps_done, epsilon=epsilon, extra=extra)
    (out_dir / "privacy_report.json").write_text(json.dumps(report, indent=2))
    card = out_dir / "README.md"
    existing = card.read_text() if card.exists() else f"# LoRA adapter for {prepared.model_name}\n"
    card.write_text(existing.rstrip() + "\n\n" + model_card_section(report))
    return report
