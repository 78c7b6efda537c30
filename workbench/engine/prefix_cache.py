"""A cached frozen prefix: a step runs only the adapted layers and the head (issue 29, part 2).

With LoRA in the last layers only (``lora_layers``), the layers before the first adapted one are frozen and their
output for an example is the same at every step: on the demo (r = 4 in the last 4 of 30 layers of SmolLM2-135M)
they are 89 % of the forward pass. So the hidden states that enter the first adapted layer are kept per training
example, computed the first time the example is sampled (lazily: an example never sampled costs nothing, and a
first visit costs what an uncached step costs), and every later step feeds them to the adapted layers directly:

    uncached:  embeddings -> layers[0:k] -> layers[k:L] -> head -> per-example loss
    cached:    store[i] (computed once, no grad)  -> layers[k:L] -> head -> per-example loss

How the cached forward stays the model's own forward (``PrefixCache.substituted``): the layer stack is swapped for
its tail ``layers[k:]`` for the length of one micro-batch, and a pre-hook on layer k replaces the hidden states it
receives (the embeddings' output, cheap: a lookup) by the cached ones. So the attention mask (the Llama causal mask
with padding, BERT's extended mask), the position ids and the rotary embeddings, the head, the loss-on-answer
masking (losses.per_example_loss) and the per-example gradient hooks (grad_sample.py, on the adapted layers: the
only trainable ones) are computed by the same code as without the cache. Batches are right-padded (data.collate):
the states of an example's real tokens do not depend on the padding of its micro-batch (masked keys; position ids
from 0), so they are stored unpadded and the padded positions are fed zeros, which no real token attends to and no
loss reads (their gradient is zero, so the per-example gradients are unchanged). Tested against the uncached path,
per example and for the released update (tests/engine/test_prefix_cache.py).

The DP mechanism is unchanged: the same Poisson sampling, the same per-example gradients (the same function of
the example, computed in two parts instead of one), the same clipping, the same noise and the same accounting. The
cache changes where a frozen function's value comes from, nothing that is released. What it holds is computed from
the private training examples: it lives in this process's memory, and beyond ``prefix_cache_mb`` in a spill file in
the run's folder, created with mode 0600 and unlinked at once (deleted whatever way the process ends; the mapping
keeps it readable until the cache closes), and it is never written anywhere else. The time a step takes now depends
on how many of its examples are new to the cache: step times are telemetry for the data owner (not exported), like
the losses.

When it applies (``plan_prefix``): a Llama-family decoder or a BERT encoder (the architectures tested), a first
adapted layer k > 0 with nothing trainable before it, no dropout active in the prefix in the training mode (a
private run trains in eval mode, trainer.set_training_mode; a non-private run of a model with dropout there would
draw new masks every step, which a cache cannot reproduce: then it is off), no activation checkpointing.
``prefix_cache=auto`` turns it off with the reason otherwise, ``on`` refuses the run with it. Data-parallel runs
keep one cache per rank, of the rank's own shard (every unit stays in one rank's shard). Evaluations, the audit's
input canaries and anything not a training example run the whole model, as before.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from workbench.errors import UserError

log = logging.getLogger(__name__)

# model_type -> (the attribute of the base model that embeds, the dotted path of its layer stack): the
# architectures whose cached forward is tested against the uncached one (tests/engine/test_prefix_cache.py).
ARCHITECTURES: dict[str, tuple[str, str]] = {
    "llama": ("embed_tokens", "layers"),
    "bert": ("embeddings", "encoder.layer"),
}
DISK_RESERVE = 1 << 30  # the spill file leaves at least this much of the run folder's disk free
MIB = 1 << 20


class PrefixCacheError(UserError, ValueError):
    """prefix_cache=on was asked for a run where the prefix cannot be cached; the message says why."""


class _Reached(Exception):
    """Ends a forward pass at the first adapted layer, once its input is captured (PrefixCache._compute)."""


@dataclass(frozen=True)
class Prefix:
    """Where a model's frozen prefix ends: the layer stack, the module holding it, and k, the first adapted layer
    (layers 0..k-1 are cached)."""

    parent: nn.Module
    attr: str
    stack: nn.ModuleList
    first: int
    hidden_size: int
    dtype: torch.dtype

    @property
    def layers(self) -> int:
        return len(self.stack)


def _base_model(model: nn.Module, embed: str, path: str) -> nn.Module | None:
    """The module that holds both the embeddings ``embed`` and the layer stack at ``path`` (LlamaModel, BertModel)."""
    for module in model.modules():
        if hasattr(module, embed) and _get(module, path) is not None:
            return module
    return None


def _get(module: nn.Module, path: str):
    for part in path.split("."):
        module = getattr(module, part, None)
        if module is None:
            return None
    return module


def _dropout_in(modules: Sequence[nn.Module]) -> str | None:
    """The first dropout that would act in train mode among ``modules`` (a module or a float attention dropout)."""
    for root in modules:
        for name, m in root.named_modules():
            if isinstance(m, nn.Dropout) and m.p > 0:
                return name or type(m).__name__
            p = getattr(m, "attention_dropout", 0.0)
            if isinstance(p, float) and p > 0:
                return f"{name}.attention_dropout"
    return None


def plan_prefix(model: nn.Module, *, training: bool) -> tuple[Prefix | None, str]:
    """(the model's cacheable prefix, "") or (None, why not). ``training``: whether the steps run in train mode
    (dropout active), as trainer.set_training_mode decides."""
    config = getattr(model, "config", None)
    kind = getattr(config, "model_type", None)
    if kind not in ARCHITECTURES:
        return None, f"the {kind or type(model).__name__} architecture is not supported (Llama-family decoders, BERT)"
    embed, path = ARCHITECTURES[kind]
    base = _base_model(model, embed, path)
    if base is None:
        return None, f"no {embed} and {path} found in the {kind} model"
    parent_path, _, attr = path.rpartition(".")
    parent = _get(base, parent_path) if parent_path else base
    stack = getattr(parent, attr)
    adapted = [i for i, layer in enumerate(stack) if any(p.requires_grad for p in layer.parameters())]
    if not adapted:
        return None, "no layer trains"
    first = adapted[0]
    if first == 0:
        return None, "the first layer is adapted (set lora.layers to adapt only the last layers)"
    prefix_modules = [getattr(base, embed), *stack[:first]]
    trains = [n for m in prefix_modules for n, p in m.named_parameters() if p.requires_grad]
    if trains:
        return None, f"a parameter before the first adapted layer trains ({trains[0]})"
    if any(getattr(m, "gradient_checkpointing", False) is True for m in model.modules()):
        return None, "activation checkpointing is on (its recomputed forward would run the whole stack again)"
    dropout = _dropout_in(prefix_modules) if training else None
    if dropout is not None:
        return None, (
            f"the frozen layers use dropout in this run's train mode ({dropout}): a non-private run draws new masks "
            "every step, which a cache cannot reproduce"
        )
    weight = next(getattr(base, embed).parameters())
    return Prefix(parent, attr, stack, first, int(config.hidden_size), weight.dtype), ""


class PrefixStore:
    """Each example's states (tokens, hidden), unpadded: in memory up to ``memory_bytes``, then in a spill file of at
    most ``spill_bytes`` in ``spill_dir`` (mode 0600, unlinked as soon as it is mapped); what fits in neither is
    not kept (``put`` says False) and the caller recomputes it."""

    def __init__(
        self, *, hidden_size: int, dtype: torch.dtype, memory_bytes: int, spill_dir: Path | None, spill_bytes: int
    ) -> None:
        self.hidden_size = hidden_size
        self.dtype = dtype
        self.itemsize = torch.empty((), dtype=dtype).element_size()
        self.memory_bytes, self.spill_bytes, self.spill_dir = memory_bytes, max(0, spill_bytes), spill_dir
        self._memory: dict[int, torch.Tensor] = {}
        self._spilled: dict[int, tuple[int, int]] = {}  # example -> (offset in elements, tokens)
        self.used_memory = 0
        self.used_spill = 0
        self._map: mmap.mmap | None = None
        self._flat: torch.Tensor | None = None  # the spill file as one flat tensor (shares the mapping)
        self.spill_path: Path | None = None  # where it was created (unlinked at once)
        self.spill_mode: int | None = None  # its permission bits, read back from the open file

    def __len__(self) -> int:
        return len(self._memory) + len(self._spilled)

    def get(self, i: int) -> torch.Tensor | None:
        """(tokens, hidden) of example ``i``, or None. A spilled one is a view of the mapping: copy it out."""
        if i in self._memory:
            return self._memory[i]
        if i in self._spilled:
            offset, tokens = self._spilled[i]
            return self._flat[offset : offset + tokens * self.hidden_size].view(tokens, self.hidden_size)
        return None

    def put(self, i: int, states: torch.Tensor) -> bool:
        """Keep ``states`` (tokens, hidden) for example ``i``: in memory, else in the spill file; False when it
        fits in neither (the example will be recomputed when it is sampled again)."""
        size = states.numel() * self.itemsize
        if self.used_memory + size <= self.memory_bytes:
            self._memory[i] = states.detach().to("cpu", self.dtype, copy=True).contiguous()
            self.used_memory += size
            return True
        if self.used_spill + size > self.spill_bytes or not self._open_spill():
            return False
        offset = self.used_spill // self.itemsize
        self._flat[offset : offset + states.numel()].copy_(states.detach().reshape(-1))
        self._spilled[i] = (offset, states.shape[0])
        self.used_spill += size
        return True

    def _open_spill(self) -> bool:
        """Create and map the spill file once: O_EXCL with mode 0600, then unlinked (only this process's mapping
        reaches it; the disk space returns when it closes). False when it cannot be made (then nothing spills)."""
        if self._flat is not None:
            return True
        if self.spill_dir is None or self.spill_bytes <= 0:
            return False
        path = Path(self.spill_dir) / f".prefix-cache-{os.getpid()}-{id(self):x}.bin"
        try:
            Path(self.spill_dir).mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as err:
            log.warning("no prefix-cache spill file in %s (%s): states beyond the memory cap are recomputed", path, err)
            self.spill_bytes = 0
            return False
        try:
            os.fchmod(fd, 0o600)  # whatever the umask
            self.spill_mode = os.fstat(fd).st_mode & 0o777
            os.ftruncate(fd, self.spill_bytes)  # sparse: blocks are used as states are written
            self._map = mmap.mmap(fd, self.spill_bytes)
        except OSError as err:
            os.close(fd)
            path.unlink(missing_ok=True)
            log.warning("the prefix-cache spill file could not be mapped (%s): beyond the cap is recomputed", err)
            self.spill_bytes = 0
            return False
        os.close(fd)  # the mapping keeps the file
        self.spill_path = path
        with contextlib.suppress(OSError):  # POSIX: gone from the folder now; elsewhere close() deletes it
            path.unlink()
        self._flat = torch.frombuffer(self._map, dtype=self.dtype)
        return True

    def close(self) -> None:
        """Free the memory and the spill file (its mapping, and the file if it could not be unlinked before)."""
        self._memory.clear()
        self._spilled.clear()
        self._flat = None
        if self._map is not None:
            with contextlib.suppress(BufferError, ValueError):
                self._map.close()
            self._map = None
        if self.spill_path is not None:
            with contextlib.suppress(OSError):
                self.spill_path.unlink(missing_ok=True)


class PrefixCache:
    """The frozen prefix of a run's training examples (the module docstring): ``substituted`` builds what a
    micro-batch lacks and runs the model from the first adapted layer on; ``report`` says what it did."""

    def __init__(
        self,
        prefix: Prefix,
        *,
        lengths: Sequence[int],
        memory_mb: int,
        spill_dir: Path | None,
        autocast: Callable[[], contextlib.AbstractContextManager],
    ) -> None:
        self.prefix = prefix
        self.autocast = autocast
        per_token = prefix.hidden_size * torch.empty((), dtype=prefix.dtype).element_size()
        self.full_bytes = sum(lengths) * per_token  # every training example cached
        memory = memory_mb * MIB
        spill = max(0, self.full_bytes - memory)
        if spill and spill_dir is not None:
            spill = min(spill, _free_disk(spill_dir) - DISK_RESERVE)
        self.store = PrefixStore(
            hidden_size=prefix.hidden_size,
            dtype=prefix.dtype,
            memory_bytes=memory,
            spill_dir=spill_dir,
            spill_bytes=spill if spill_dir is not None else 0,
        )
        self.memory_mb = memory_mb
        self.build_seconds = 0.0
        self.hits = 0  # examples fed from the cache
        self.built = 0  # examples whose prefix was computed (first visits, and those that did not fit)
        self.not_kept = 0  # of those, computed again because the cache had no room
        self._final: dict | None = None  # the report when it closed

    def header(self) -> dict:
        """What the run's header shows before the first step (RunStarted.prefix_cache)."""
        return {
            "layers_cached": self.prefix.first,
            "layers": self.prefix.layers,
            "full_mb": round(self.full_bytes / MIB, 1),
            "memory_cap_mb": self.memory_mb,
            "spill_cap_mb": round(self.store.spill_bytes / MIB, 1),
        }

    def report(self) -> dict:
        """The summary's ``prefix_cache``: layers cached, examples held, the size in memory and spilled, the seconds
        spent building it, and how many example visits it served or had to recompute. After ``close``: as it was then."""
        if self._final is not None:
            return self._final
        return {
            **self.header(),
            "examples": len(self.store),
            "memory_mb": round(self.store.used_memory / MIB, 1),
            "spilled_mb": round(self.store.used_spill / MIB, 1),
            "build_seconds": round(self.build_seconds, 2),
            "hits": self.hits,
            "built": self.built,
            "recomputed": self.not_kept,
        }

    def close(self) -> None:
        """Free the memory and the spill file; the report keeps its numbers."""
        if self._final is None:
            self._final = self.report()
        self.store.close()

    @contextlib.contextmanager
    def substituted(self, model: nn.Module, indices: Sequence[int], batch: dict[str, torch.Tensor]):
        """Within the block, ``model`` on ``batch`` (whose rows are the training examples ``indices``) runs from the
        first adapted layer on, fed the cached states (those missing are computed first, without grad)."""
        hidden = self.hidden(model, indices, batch)  # (B, T, H)
        with from_layer(self.prefix, hidden):
            yield

    def hidden(self, model: nn.Module, indices: Sequence[int], batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, T, H): each row's cached states on its real tokens, zeros on the padding; rows not cached yet are
        computed (and kept when there is room)."""
        mask = batch["attention_mask"]  # (B, T), right-padded: ones then zeros
        if bool((mask[:, 1:] > mask[:, :-1]).any()):
            raise ValueError("the cached prefix needs right-padded batches (data.collate's default)")
        lengths = mask.sum(1).tolist()
        b, t = mask.shape
        out = torch.zeros((b, t, self.prefix.hidden_size), dtype=self.prefix.dtype)
        missing = []
        for row, (i, n) in enumerate(zip(indices, lengths)):
            held = self.store.get(int(i))
            if held is None or held.shape[0] != n:
                missing.append(row)
            else:
                out[row, :n] = held
                self.hits += 1
        out = out.to(mask.device, non_blocking=True)
        if missing:
            computed = self._compute(model, batch, missing)  # (M, T, H)
            for j, row in enumerate(missing):
                n = lengths[row]
                out[row, :n] = computed[j, :n]
                if self.store.get(int(indices[row])) is None and not self.store.put(int(indices[row]), computed[j, :n]):
                    self.not_kept += 1
        return out

    @torch.no_grad()
    def _compute(self, model: nn.Module, batch: dict[str, torch.Tensor], rows: list[int]) -> torch.Tensor:
        """The states entering layer k for ``rows`` of ``batch``: the model's own forward in its current mode (the
        training mode), under the step's autocast, ended at layer k by a pre-hook."""
        t0 = time.perf_counter()
        pick = torch.as_tensor(rows, device=batch["input_ids"].device)
        captured: list[torch.Tensor] = []

        def capture(_module, args, kwargs):
            captured.append(args[0] if args else kwargs["hidden_states"])
            raise _Reached

        handle = self.prefix.stack[self.prefix.first].register_forward_pre_hook(capture, with_kwargs=True)
        try:
            with self.autocast():
                model(input_ids=batch["input_ids"][pick], attention_mask=batch["attention_mask"][pick])
        except _Reached:
            pass
        finally:
            handle.remove()
        self.build_seconds += time.perf_counter() - t0
        self.built += len(rows)
        return captured[0].to(self.prefix.dtype)


@contextlib.contextmanager
def from_layer(prefix: Prefix, hidden: torch.Tensor):
    """Within the block, a forward pass of the model runs ``prefix.stack[k:]`` only, its first layer fed ``hidden``
    instead of what it receives (the embeddings' output): the layer stack is swapped for its tail (the model's own
    forward still makes the masks, the positions and the head) and restored after, also when a Stop raises."""
    tail = prefix.stack[prefix.first :]  # a ModuleList of the same layer modules (their hooks kept)

    def feed(_module, args, kwargs):
        if args:
            return (hidden, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": hidden}

    handle = prefix.stack[prefix.first].register_forward_pre_hook(feed, with_kwargs=True)
    prefix.parent._modules[prefix.attr] = tail
    try:
        yield
    finally:
        prefix.parent._modules[prefix.attr] = prefix.stack
        handle.remove()


def _free_disk(folder: Path) -> int:
    path = Path(folder)
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return 0


def prefix_cache_for(
    model: nn.Module,
    *,
    mode: str,
    memory_mb: int,
    training: bool,
    lengths: Sequence[int],
    spill_dir: Path | None,
    autocast: Callable[[], contextlib.AbstractContextManager],
) -> tuple[PrefixCache | None, str]:
    """The run's prefix cache, or (None, why not). ``mode``: the config's prefix_cache; 'on' raises
    PrefixCacheError where it does not apply, 'auto' returns the reason, 'off' says so."""
    if mode == "off":
        return None, "off (performance.prefix_cache=off)"
    prefix, why = plan_prefix(model, training=training)
    if prefix is None:
        if mode == "on":
            raise PrefixCacheError(
                f"performance.prefix_cache=on, but the frozen prefix of this run cannot be cached: {why}. "
                "Use prefix_cache=auto (caches where it can) or off."
            )
        return None, why
    cache = PrefixCache(prefix, lengths=lengths, memory_mb=memory_mb, spill_dir=spill_dir, autocast=autocast)
    return cache, ""
