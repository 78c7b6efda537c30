"""The empirical privacy audit of one run (Steinke, Nasr, Jagielski 2023): secret canaries that go through the same
clipping and noise as the data, and the lower bound on epsilon they give.

- run.py: the audit of a run, which listens to the trainer's steps (``for_run`` builds it; the trainer calls it)
- canaries.py: gradient canaries (white-box: scored on the released noisy sums)
- input_canaries.py: input canaries (black-box: secret examples, scored on the trained adapter's loss)
- exposure.py: the exposure of the demo data's planted secrets (Carlini et al. 2019)

The statistics (the bound, its power, the guess design, the canaries' own epsilon) are torch-free, in
workbench/privacy/audit.py. This package builds on the engine (the DP step, the model's loss) and the engine never
imports it: the trainer is given ``for_run`` by whoever starts the run (the Session).
"""

from workbench.audit.run import RunAudit, for_run

__all__ = ["RunAudit", "for_run"]
