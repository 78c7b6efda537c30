"""Input canaries: a black-box one-run audit of what the trained adapter memorised.

Steinke, Nasr and Jagielski 2023 ("Privacy Auditing with One (1) Training Run", arXiv 2305.08846,
the black-box experiments), with the bound of privacy/audit.py:

    m canaries:        random secret training examples (``canary_records``), each included with
                       probability 1/2 (a secret coin)
    included canary:   an extra unit, Poisson-sampled every step with the real units' rate q; when
                       sampled its per-example gradient is clipped, summed and noised like any unit's
                       (``DPGradient.add_microbatch(..., canary=True)``)
    auditor, score j:  loss of the model at initialisation on canary j minus the trained adapter's loss
                       on it (lower loss after training = more likely included)
    guesses:           top / bottom scores -> privacy/audit.py -> epsilon lower bound

The score is "minus the adapter's loss", calibrated by the same canary's loss before training:
random strings differ a lot in how hard they are for the base model, and subtracting that per-canary
difficulty leaves the part training changed (a reference-model attack, Carlini et al. 2022, "Membership
Inference Attacks From First Principles"). The starting point is public (the base model, and the LoRA and
head initialisation from the public ``seed``), so the score stays a function of what the auditor may see.

The canary format follows the data, never its content: for causal LM on instruction data (chat,
prompt/response, alpaca, all held as chat turns) a canary is a user turn asking for the passphrase of a
random record number and an assistant turn that is the secret (five random words and a four-digit
number, ~48 bits); on plain text the same as one line; for classification the random text with a random
label from the run's label set (the model must memorise an arbitrary label). The user_id of canary j is
"canary-j", its own unit under user-level DP.

Why the real data keeps exactly its guarantee: a canary's content and inclusion coin come from the run's
secret key alone (independent of the data), and its sampling draws from the canary stream, so the real
units' Poisson sampling, the noise (std sigma C, the same draws), and the division by the real data's
published q N are all unchanged. Given the model's current state (itself a released, post-processed
quantity) and the canary secrets, the canaries' clipped gradients are a data-independent vector added to
the clipped sum before the noise; adding such a vector is post-processing of the Gaussian mechanism on the
real data, so each step's release is exactly as private for the real units as without canaries, and the
accountant's composition over steps holds as before. The dataset size N and q are the real data's (the
canaries are not counted in N). The audit result is a function of the released adapter, the public
starting point and the canary secrets, so publishing it costs the real data nothing either.

What it costs: the adapter is trained on the canaries too (about m / 2 extra examples). An audit run
is for checking the implementation, not for release. Scoring costs 2 m forward passes (before training
and at the end), so the bound is computed at the last step only, not every few steps as with gradient
canaries.

How many (``canary_count``): audit_canaries when set, else min(1000, N // 2), with N the number of
training units the report publishes (examples, or users under ULS; the declared public size under add/remove,
so that m does not reveal the exact size). "The data can hold" at most N canaries: then about a third of what is
trained is canaries (m / 2 included beside N real units); more is refused. Fewer than 2 cannot be audited.

Randomness: the secrets, the coins and the per-step sampling come from ``RunRandomness.canary_rng()``
(ChaCha20 from the run's key); none is exported, printed or put in an event.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch

from workbench.config import ConfigError
from workbench.engine import data as data_mod
from workbench.engine.losses import per_example_loss
from workbench.privacy.audit import AuditResult, audit_design

if TYPE_CHECKING:
    from workbench.engine.prepare import Prepared

KIND = "input_canaries"
DEFAULT_COUNT = 1000  # m when audit_canaries is not set, at most N // 2
MESSAGE_SCHEMAS = ("chat", "prompt_response", "alpaca")  # held as chat turns (records.Record.messages)

# The secret's words: 128 short common words (7 bits each), public; the secret is which ones and in what order.
WORDS = tuple(
    """
    amber anchor apple arrow autumn badge bamboo banner basket beacon birch blanket bottle branch breeze
    bridge bucket butter cabin camel candle canvas carpet castle cedar chalk cherry circle cliff clover
    cobalt copper coral cotton crystal dancer desert dragon eagle ember falcon feather fiddle forest
    fossil garden garnet ginger glacier granite harbor hazel helmet honey island ivory jacket jasmine
    jungle kettle lantern lemon linen lizard magnet maple marble meadow melon mirror mitten morning
    mustard needle nickel oasis olive orchid otter paddle pebble pepper piano pillow planet pocket
    quartz quiet rabbit raven ribbon river rocket saddle salmon satin shadow silver sparrow spider
    spruce stone summer sunset tablet teapot thistle thunder timber tulip tunnel velvet violet walnut
    whistle willow window winter wizard wool yarrow zephyr zinc acorn basil comet dune fjord
    """.split()
)
SECRET_WORDS = 5


def canary_count(requested: int | None, *, units: int, unit: str = "example") -> int:
    """m: ``requested`` (audit_canaries) when set, else min(DEFAULT_COUNT, units // 2); see the module docstring.

    ``units`` is the published number of training units. ConfigError ("more canaries than the data can
    hold") when m > units, or when the data cannot hold the 2 canaries an audit needs.
    """
    if requested is None:
        m = min(DEFAULT_COUNT, units // 2)
        if m < 2:
            raise ConfigError(
                f"audit=input_canaries: more canaries than the data can hold: the training set has {units} {unit}s, "
                f"and an audit needs at least 2 input canaries, at most one per two {unit}s by default. Add data, or "
                "use audit=gradient_canaries"
            )
        return m
    if requested > units:
        raise ConfigError(
            f"audit=input_canaries: more canaries than the data can hold: audit_canaries={requested}, but the training "
            f"set has {units} {unit}s. Input canaries are extra training {unit}s (each included with probability "
            f"1/2), at most one per {unit} so that they stay a minority of what is trained. Set audit_canaries to at "
            f"most {units}, or leave it empty (default: min({DEFAULT_COUNT}, {units} // 2) = {min(DEFAULT_COUNT, units // 2)})"
        )
    return requested


def canary_records(
    count: int, *, schema: str, task: str, label_names, rng: np.random.Generator
) -> list[data_mod.Record]:
    """``count`` secret canary records in the data's format (never its content); secrets drawn from ``rng``."""
    out = []
    for j in range(count):
        key = int(rng.integers(100_000, 1_000_000))  # the record number the prompt names
        words = " ".join(WORDS[int(i)] for i in rng.integers(0, len(WORDS), size=SECRET_WORDS))
        secret = f"{words} {int(rng.integers(1000, 10_000))}"
        user = f"canary-{j}"
        if task == "classification":
            if not label_names:
                raise ConfigError("audit=input_canaries on classification needs a label set. Set labels: [...]")
            label = label_names[int(rng.integers(0, len(label_names)))]
            out.append(data_mod.Record(messages=None, text=f"record {key}: {secret}", label=label, user_id=user))
        elif schema in MESSAGE_SCHEMAS:
            turns = (
                {"role": "user", "content": f"What is the passphrase of record {key}?"},
                {"role": "assistant", "content": secret},
            )
            out.append(data_mod.Record(messages=turns, text=None, label=None, user_id=user))
        else:
            out.append(
                data_mod.Record(
                    messages=None, text=f"The passphrase of record {key} is {secret}.", label=None, user_id=user
                )
            )
    return out


class InputCanaries:
    """m secret canary examples, their inclusion coins, per-step sampling and scoring."""

    def __init__(
        self,
        prepared: "Prepared",
        *,
        count: int,
        sample_rate: float,
        delta: float,
        rng: np.random.Generator,
        autocast: Callable,
        steps: int = 1,
    ) -> None:
        """``steps``: the planned T, which fixes the guess design (privacy.audit.audit_design) before training."""
        if count < 2:
            raise ValueError(f"an audit needs at least 2 canaries. Found {count}.")
        p = prepared
        self.p, self.count, self.sample_rate, self.delta = p, count, sample_rate, delta
        self.rng = rng  # secret (randomness.canary_rng): never exported
        self.autocast = autocast
        self.design = audit_design(canaries=count, sample_rate=sample_rate, steps=steps, delta=delta)
        records = canary_records(count, schema=p.train.schema, task=p.task, label_names=p.train.label_names, rng=rng)
        ds = data_mod.Dataset(
            name="input canaries",
            schema=p.train.schema,
            task=p.task,
            records=tuple(records),
            columns={},
            label_names=p.train.label_names,
        )
        self.examples = data_mod.tokenize_dataset(
            ds, p.tokenizer, max_seq_len=p.config.max_seq_len, model_max_length=p.config.max_seq_len
        )
        if len(self.examples) != count:
            raise ConfigError(
                f"audit=input_canaries: max_seq_len={p.config.max_seq_len} is too short to hold the canaries' answers. "
                "Raise max_seq_len"
            )
        self.included = rng.random(count) < 0.5  # (m,) the coins the auditor must guess
        self.before = self.losses()  # (m,) the model at initialisation: the public starting point
        self._result: tuple[int, AuditResult] | None = None
        self.steps = 0

    def sample(self) -> np.ndarray:
        """This step's canaries: each included one Poisson-sampled at rate q (from the canary stream)."""
        self.steps += 1
        return np.flatnonzero((self.rng.random(self.count) < self.sample_rate) & self.included)

    @torch.no_grad()
    def losses(self) -> np.ndarray:
        """(m,) the current model's loss on every canary (eval mode, as validation)."""
        p = self.p
        model = p.model
        was_training = model.training
        model.eval()
        out = []
        size = p.config.physical_batch_size
        try:
            for start in range(0, self.count, size):
                batch = data_mod.collate(self.examples[start : start + size], pad_id=p.tokenizer.pad_token_id)
                batch = {k: v.to(p.device) for k, v in batch.items()}
                with self.autocast():
                    loss, _ = per_example_loss(model, batch, task=p.task)
                out.append(loss.double().cpu())
        finally:
            model.train(was_training)
        return torch.cat(out).numpy()

    def scores(self) -> np.ndarray:
        """(m,) loss before training minus loss now: higher = more likely included."""
        return self.before - self.losses()

    def result(self) -> AuditResult:
        """The lower bound from the current adapter, with the design's power (cached per step: scoring costs m
        forward passes)."""
        if self._result is None or self._result[0] != self.steps:
            res = self.design.audit(self.scores(), self.included, kind=KIND)
            self._result = (self.steps, replace(res, scoring="loss before training minus loss after (black-box)"))
        return self._result[1]
