"""A federation's data and model in one process: the run's prepared model and splits, the training records laid
out over the clients (partition.py), and each client's tokenised examples with its local plan.

The server and every client process build the same ``Federation`` from the same public settings (the layout is a
function of them and of the data, never of a random draw), so a client reads its partition by its index alone.
"""

from __future__ import annotations

import dataclasses
from functools import cached_property

import torch

from workbench.config import RunConfig
from workbench.engine import data as data_mod
from workbench.engine.prepare import Prepared, load_splits, prepare
from workbench.federated.options import FederatedOptions
from workbench.federated.partition import Partition, PartitionSpec, column_values, partition
from workbench.planning.plan import PrivacyPlan, make_plan


class Federation:
    """The prepared base run (model, tokenizer, splits) and the clients' data (module docstring)."""

    def __init__(self, config: RunConfig, options: FederatedOptions, spec: PartitionSpec, local: RunConfig) -> None:
        self.config, self.options, self.spec, self.local = config, options, spec, local
        self._plans: dict[int, PrivacyPlan] = {}  # each client's local plan, made once (plan())
        train, _ = load_splits(config)  # the layout first: bad settings are messages before the model loads
        self.layout: Partition = layout(config, options, spec, train)
        self.base: Prepared = prepare(config)  # the same split (neighbour-stable, keyed by the config's salt)
        if options.ffa:
            freeze_lora_a(self.base.model)

    @property
    def names(self) -> tuple[str, ...]:
        return self.layout.names

    def records(self, client: int) -> data_mod.Dataset:
        train = self.base.train
        return dataclasses.replace(train, records=tuple(train.records[i] for i in self.layout.indices[client]))

    @cached_property
    def examples(self) -> list[list]:
        """Each client's tokenised training examples (capped per user under privacy.unit=user), as ``prepare``
        makes a run's."""
        return [self._tokenize(self.records(c)) for c in range(self.options.clients)]

    def _tokenize(self, ds: data_mod.Dataset) -> list:
        cfg, p = self.config, self.base
        tok = data_mod.tokenize_dataset(
            ds,
            p.tokenizer,
            max_seq_len=cfg.max_seq_len,
            model_max_length=cfg.max_seq_len,  # prepare() checked it against the model's context window
            response_max_tokens=cfg.response_max_tokens,
        )
        if cfg.privacy_unit == "user":
            tok = data_mod.cap_per_user(
                tok, k=cfg.max_examples_per_user, how=cfg.user_example_selection, seed=cfg.split_salt, name=ds.name
            )
        return list(tok)

    def sizes(self) -> list[tuple[int, int | None]]:
        """Each client's (examples, users or None) after tokenisation and the per-user cap."""
        return [(len(ex), len({e.user_id for e in ex if e.user_id is not None}) or None) for ex in self.examples]

    def subjects(self) -> list[list[str | None]]:
        return [[e.user_id for e in ex] for ex in self.examples]

    def plan(self, client: int) -> PrivacyPlan:
        """The client's local plan: the local config on its data (non-private at client level). Made once per client
        (a target epsilon calibrates sigma, seconds of accounting) and reused by every round the client takes part in."""
        if client not in self._plans:
            n, users = self.sizes()[client]
            self._plans[client] = make_plan(self.local, dataset_size=n, num_users=users)
        return self._plans[client]

    def plans(self) -> tuple[PrivacyPlan, ...]:
        """Every client's local plan (``plan``), in client order."""
        return tuple(self.plan(c) for c in range(self.options.clients))

    def prepared(self, client: int) -> Prepared:
        """The base run narrowed to one client: its examples, its plan, the local config."""
        return dataclasses.replace(
            self.base, config=self.local, train_tok=self.examples[client], plan=self.plan(client)
        )

    # -- the adapter ----------------------------------------------------------------------------------
    def adapter(self) -> dict[str, torch.Tensor]:
        """The trainable parameters (LoRA B, and A unless FFA; a classifier's head): what is sent and aggregated."""
        return {n: p for n, p in self.base.model.named_parameters() if p.requires_grad}

    def arrays(self) -> dict:
        return {n: p.detach().cpu().numpy().copy() for n, p in self.adapter().items()}

    def load(self, arrays: dict) -> None:
        params = self.adapter()
        with torch.no_grad():
            for name, value in arrays.items():
                params[name].copy_(torch.as_tensor(value, dtype=params[name].dtype))


def layout(config: RunConfig, options: FederatedOptions, spec: PartitionSpec, train: data_mod.Dataset) -> Partition:
    """The training records over the clients (partition.py); the salt and seed are the config's public ones."""
    values = (
        column_values(config.data, spec.column, [r.line for r in train.records]) if spec.kind == "by-column" else None
    )
    return partition(
        train.records,
        clients=options.clients,
        spec=spec,
        salt=f"workbench-federated/{config.split_salt}",
        seed=config.seed,
        column_values=values,
        dataset=config.data,
    )


def freeze_lora_a(model: torch.nn.Module) -> None:
    """FFA-LoRA (Sun et al., ICLR 2024): A stays at its initialisation (the config's public seed, the same in every
    process), only B trains and is aggregated; averaging B alone is exact, where averaging B and A separately is
    not the average of the products B A."""
    for name, param in model.named_parameters():
        if "lora_A" in name:
            param.requires_grad_(False)
