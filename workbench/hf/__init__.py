"""DP fine-tuning with Hugging Face's ``Trainer`` and TRL's ``SFTTrainer`` on the engine of ``workbench train``.

    pip install "dp-workbench[hf]"

    from workbench.hf import DPTrainer, PrivacyArguments, make_dp_trainer
    trainer = DPTrainer(model=peft_model, args=TrainingArguments(...), train_dataset=data,
                        privacy_args=PrivacyArguments(target_epsilon=8.0, expected_batch_size=64))
    trainer.train(); trainer.save_model()      # adapter + privacy_report.json + the card's DP section

    DPSFTTrainer = make_dp_trainer(trl.SFTTrainer)   # also: workbench.hf.DPSFTTrainer (needs trl)

See workbench/hf/trainer.py for how the Trainer drives the DP step, and README.md ("Your own script").
"""

from workbench.hf.arguments import PrivacyArguments
from workbench.hf.trainer import DPTrainer, DPTrainerError, DPTrainerMixin, make_dp_trainer

__all__ = ["DPSFTTrainer", "DPTrainer", "DPTrainerError", "DPTrainerMixin", "PrivacyArguments", "make_dp_trainer"]


def __getattr__(name: str):
    if name == "DPSFTTrainer":  # trl is imported only when asked for
        from trl import SFTTrainer

        return make_dp_trainer(SFTTrainer)
    raise AttributeError(name)
