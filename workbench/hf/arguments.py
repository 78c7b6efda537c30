"""``PrivacyArguments``: the privacy settings of a Trainer run, as ``HfArgumentParser`` reads them.

    parser = HfArgumentParser((TrainingArguments, PrivacyArguments))
    training_args, privacy_args = parser.parse_args_into_dataclasses()

The names do not clash with ``TrainingArguments`` (its ``max_grad_norm`` clips the averaged gradient; the
per-example clipping norm here is ``per_sample_max_grad_norm``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass
class PrivacyArguments:
    """Differential privacy for ``DPTrainer`` (workbench.hf): what the plan is made of (planning/plan.py)."""

    target_epsilon: Optional[float] = field(
        default=8.0, metadata={"help": "Epsilon budget; sigma is calibrated to reach it at the last step."}
    )
    noise_multiplier: Optional[float] = field(
        default=None, metadata={"help": "Noise multiplier sigma; given, it is used as is (0: the non-private run)."}
    )
    delta: Optional[float] = field(default=None, metadata={"help": "Delta; default: below 1/N (at most 1e-5)."})
    per_sample_max_grad_norm: float = field(default=1.0, metadata={"help": "Per-example clipping norm C."})
    accountant: str = field(default="pld", metadata={"help": "pld, rdp, prv or edgeworth (compared beside PLD)."})
    neighboring: str = field(
        default="auto",
        metadata={"help": "replace_one, add_remove (needs public_dataset_size) or auto."},
    )
    public_dataset_size: Optional[int] = field(
        default=None, metadata={"help": "A dataset size you declare public (add/remove neighbours)."}
    )
    privacy_unit: str = field(default="example", metadata={"help": "example (user: use `workbench train`)."})
    max_examples_per_user: int = field(default=8, metadata={"help": "k, the per-user cap (privacy_unit=user)."})
    expected_batch_size: Optional[int] = field(
        default=None,
        metadata={
            "help": "The expected Poisson batch q*N; default: per_device_train_batch_size x "
            "gradient_accumulation_steps. One DP step per optimizer update whatever the accumulation."
        },
    )
    audit: str = field(default="none", metadata={"help": "none (audits run with `workbench train`)."})
    noise_seed: Optional[int] = field(
        default=None,
        metadata={"help": "Labelled seeded randomness for teaching and tests: reproducible, NO privacy guarantee."},
    )

    def settings(self) -> dict:
        """The RunConfig keys these map to."""
        return dict(
            target_epsilon=self.target_epsilon,
            noise_multiplier=self.noise_multiplier,
            delta=self.delta,
            max_grad_norm=self.per_sample_max_grad_norm,
            accountant=self.accountant,
            neighboring=self.neighboring,
            public_dataset_size=self.public_dataset_size,
            privacy_unit=self.privacy_unit,
            max_examples_per_user=self.max_examples_per_user,
            audit=self.audit,
            noise_seed=self.noise_seed,
        )
