"""The cached frozen prefix (engine/prefix_cache.py, issue 29): per-example gradients and the released update equal
the uncached path's, for a Llama decoder (causal LM and classifier) and a BERT encoder classifier; the memory cap,
the private spill file and the fallback to recomputing; where it does not apply, 'auto' says why and 'on' refuses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from factories import TINY_RUN
from safetensors.torch import load_file

from workbench import train
from workbench.config import RunConfig
from workbench.engine.grad_sample import PerExampleGrads
from workbench.engine.losses import per_example_loss
from workbench.engine.models import attach_lora, tiny_config
from workbench.engine.prefix_cache import PrefixCache, PrefixCacheError, PrefixStore, plan_prefix, prefix_cache_for
from workbench.engine.randomness import RunRandomness
from workbench.engine.trainer import StopRequested, Trainer, prepare

VOCAB = 512


def _llama(*, layers: int, adapted: int, task: str = "causal_lm") -> torch.nn.Module:
    """A random Llama with ``layers`` layers and LoRA (and, for classification, the head) in the last ``adapted``."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    cfg = tiny_config(vocab_size=VOCAB, pad_token_id=0, num_labels=3)
    cfg.num_hidden_layers = layers
    torch.manual_seed(0)
    builder = AutoModelForSequenceClassification if task == "classification" else AutoModelForCausalLM
    model = attach_lora(
        builder.from_config(cfg), task=task, r=4, alpha=8, dropout=0.0, target_modules="auto", last_layers=adapted
    )
    _nonzero_lora_b(model)
    return model.eval()


def _bert(*, layers: int = 3, adapted: int = 1) -> torch.nn.Module:
    """A random BERT encoder classifier (MiniLM's architecture, smaller) with LoRA in the last ``adapted`` layers."""
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=64,
        num_labels=2,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    model = attach_lora(
        BertForSequenceClassification(cfg),
        task="classification",
        r=4,
        alpha=8,
        dropout=0.0,
        target_modules="auto",
        last_layers=adapted,
    )
    _nonzero_lora_b(model)
    return model.eval()


def _nonzero_lora_b(model: torch.nn.Module) -> None:
    """LoRA B starts at zero, which would leave A's per-example gradients zero: give it values, so every trainable
    module's gradient is compared."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)


def _batch(lengths: list[int], *, task: str, seed: int) -> dict[str, torch.Tensor]:
    """Right-padded examples of these lengths (data.collate's layout): answer-only labels for the causal LM."""
    g = torch.Generator().manual_seed(seed)
    b, t = len(lengths), max(lengths)
    ids = torch.zeros((b, t), dtype=torch.long)
    mask = torch.zeros((b, t), dtype=torch.long)
    labels = torch.full((b, t), -100, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(1, VOCAB, (n,), generator=g)
        mask[i, :n] = 1
        labels[i, n // 2 : n] = ids[i, n // 2 : n]  # the answer: the second half
    if task == "classification":
        labels = torch.randint(0, 2, (b,), generator=g)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _rows(batch: dict, rows: list[int]) -> dict:
    """Those rows of ``batch``, padded to their own longest (another micro-batch's padding)."""
    t = int(batch["attention_mask"][rows].sum(1).max())
    out = {k: v[rows] for k, v in batch.items()}
    return {k: (v[:, :t] if v.dim() == 2 else v) for k, v in out.items()}


def _per_example(model, batch, *, task, cache: PrefixCache | None = None, indices=None) -> dict[str, torch.Tensor]:
    """Every trainable module's per-example weight gradients (grad_sample's hooks) and the losses."""
    hooks = PerExampleGrads(model)
    hooks.enabled = True
    try:
        context = cache.substituted(model, indices, batch) if cache is not None else _null()
        with context:
            loss, _ = per_example_loss(model, batch, task=task)
        loss.sum().backward()
        out = {name: g.weight.clone() for name, g in hooks.grads.items()}
        out["loss"] = loss.detach()
    finally:
        hooks.remove()
        model.zero_grad(set_to_none=True)
    return out


def _null():
    import contextlib

    return contextlib.nullcontext()


def _cache(model, *, lengths, memory_mb=64, spill_dir=None, training=False) -> PrefixCache:
    cache, why = prefix_cache_for(
        model,
        mode="on",
        memory_mb=memory_mb,
        training=training,
        lengths=lengths,
        spill_dir=spill_dir,
        autocast=_null,
    )
    assert cache is not None, why
    return cache


def _assert_same(cached: dict, uncached: dict) -> None:
    assert set(cached) == set(uncached) and len(cached) > 1
    for name in uncached:
        assert uncached[name].abs().sum() > 0, f"{name}: the oracle's gradient is zero, the comparison would be empty"
        torch.testing.assert_close(cached[name], uncached[name], rtol=1e-4, atol=1e-6, msg=name)


CASES = {
    "llama-causal-lm": (lambda: _llama(layers=4, adapted=2), "causal_lm", 2),
    "llama-classifier": (lambda: _llama(layers=3, adapted=1, task="classification"), "classification", 2),
    "bert-classifier": (lambda: _bert(layers=3, adapted=1), "classification", 2),
}


@pytest.mark.parametrize("case", list(CASES))
def test_cached_per_example_gradients_equal_the_uncached_ones(case):
    """Oracle: the uncached model. States built in one micro-batch are read in another with other padding, beside
    examples seen for the first time; both must give the uncached per-example gradients and losses."""
    build, task, first = CASES[case]
    model = build()
    lengths = [9, 5, 12, 7, 3, 10, 6]
    batch = _batch(lengths, task=task, seed=1)
    cache = _cache(model, lengths=lengths)
    assert cache.prefix.first == first
    a = [0, 1, 2, 3]  # the first micro-batch: all four built
    cached = _per_example(model, _rows(batch, a), task=task, cache=cache, indices=a)
    _assert_same(cached, _per_example(model, _rows(batch, a), task=task))
    b = [4, 1, 6, 3]  # the next: two cached (other padding), two new
    cached = _per_example(model, _rows(batch, b), task=task, cache=cache, indices=b)
    _assert_same(cached, _per_example(model, _rows(batch, b), task=task))
    report = cache.report()
    assert report["built"] == 6 and report["hits"] == 2 and report["examples"] == 6
    assert report["layers_cached"] == first and report["recomputed"] == 0
    assert len(model.base_model.model.get_submodule(_stack_path(model))) > first, "the layer stack is restored"


def _stack_path(model) -> str:
    return next(n for n, m in model.base_model.model.named_modules() if isinstance(m, torch.nn.ModuleList))


def test_what_does_not_fit_is_recomputed_and_still_equal():
    """No memory and no spill file: nothing is kept, every visit computes the prefix again, the gradients stay the
    uncached ones."""
    model = _llama(layers=3, adapted=1)
    lengths = [8, 6, 4]
    batch = _batch(lengths, task="causal_lm", seed=2)
    cache = _cache(model, lengths=lengths, memory_mb=0, spill_dir=None)
    for _ in range(2):
        got = _per_example(model, batch, task="causal_lm", cache=cache, indices=[0, 1, 2])
        _assert_same(got, _per_example(model, batch, task="causal_lm"))
    assert cache.report()["recomputed"] == 6 and cache.report()["examples"] == 0


def test_the_spill_file_is_private_unlinked_and_reads_back(tmp_path):
    store = PrefixStore(hidden_size=4, dtype=torch.float32, memory_bytes=3 * 4 * 4, spill_dir=tmp_path, spill_bytes=64)
    states = [torch.randn(3, 4), torch.randn(2, 4), torch.randn(2, 4), torch.randn(5, 4)]
    kept = [store.put(i, s) for i, s in enumerate(states)]
    assert kept == [True, True, True, False]  # in memory, spilled (32 of 64 bytes), spilled, too big for either
    assert store.used_memory == 48 and store.used_spill == 64
    assert store.spill_mode == 0o600, oct(store.spill_mode or 0)
    assert not store.spill_path.exists(), "the spill file is unlinked as soon as it is mapped"
    assert list(tmp_path.iterdir()) == []
    for i in range(3):
        torch.testing.assert_close(store.get(i), states[i], rtol=0, atol=0)
    assert store.get(3) is None
    store.close()
    assert store.get(1) is None and list(tmp_path.iterdir()) == []


def test_where_it_does_not_apply_auto_says_why_and_on_refuses():
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = attach_lora(
        GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=2)),
        task="causal_lm",
        r=2,
        alpha=4,
        dropout=0.0,
        target_modules="c_attn",
        last_layers=1,
    )
    every_layer = _llama(layers=2, adapted=2)
    bert = _bert(layers=2, adapted=1)
    for model, training, why in (
        (gpt2, False, "gpt2 architecture is not supported"),
        (every_layer, False, "the first layer is adapted"),
        (bert, True, "use dropout"),  # a non-private run trains in train mode: BERT's dropout would differ
    ):
        prefix, reason = plan_prefix(model, training=training)
        assert prefix is None and why in reason
        kwargs = dict(memory_mb=8, training=training, lengths=[4], spill_dir=None, autocast=_null)
        assert prefix_cache_for(model, mode="auto", **kwargs) == (None, reason)
        with pytest.raises(PrefixCacheError, match="prefix_cache=on"):
            prefix_cache_for(model, mode="on", **kwargs)
        assert prefix_cache_for(model, mode="off", **kwargs)[0] is None
    assert plan_prefix(bert, training=False)[0] is not None  # a private run: eval mode, no dropout
    assert plan_prefix(_llama(layers=2, adapted=1), training=True)[0] is not None  # Llama: no dropout at all


# -- the trainer: the released update, the report, the spill file, a Stop -----------------------------------------


def _qa_file(tmp_path: Path, n: int = 24) -> str:
    rows = [
        {"prompt": f"Ticket {i}: my bill is wrong?", "response": f"Department: {'Billing' if i % 2 else 'Lab'}"}
        for i in range(n)
    ]
    path = tmp_path / "qa.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return str(path)


RUN = dict(
    TINY_RUN,
    lora_layers=1,
    max_steps=4,
    noise_multiplier=1.0,
    noise_seed=11,
    batch_size=8,
    physical_batch_size=4,
    baseline_eval=False,
    learning_rate=1e-2,
)


def _adapter(summary: dict) -> dict[str, torch.Tensor]:
    return load_file(str(Path(summary["adapter_dir"]) / "adapter_model.safetensors"))


@pytest.mark.parametrize("memory_mb", [64, 0])
def test_the_released_update_with_the_cache_equals_the_uncached_one(tmp_path, memory_mb):
    """Same seeded sampling and noise (noise_seed: a test's public seed), with and without the cache: the adapters
    after four steps agree to float tolerance. memory_mb=0 keeps every state in the spill file."""
    data = _qa_file(tmp_path)
    plain = train(**RUN, data=data, prefix_cache="off")
    cached = train(**RUN, data=data, prefix_cache="on", prefix_cache_mb=memory_mb)
    assert plain["prefix_cache"] == {"off": "off (performance.prefix_cache=off)"}
    report = cached["prefix_cache"]
    assert report["layers_cached"] == 1 and report["layers"] == 2 and report["hits"] > 0, report
    assert (report["spilled_mb"] > 0) == (memory_mb == 0) and report["recomputed"] == 0
    a, b = _adapter(plain), _adapter(cached)
    assert set(a) == set(b)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-6, msg=k)
    run_dir = Path(cached["adapter_dir"]).parent
    assert not [p for p in run_dir.rglob("*") if "prefix-cache" in p.name], "no spill file is left in the run folder"


def test_a_non_private_llama_run_caches_too_and_matches(tmp_path):
    """A non-private run trains in train mode; the Llama prefix has no dropout, so the cache applies there too."""
    settings = dict(RUN, data=_qa_file(tmp_path), noise_multiplier=0, max_grad_norm=None, target_epsilon=None)
    plain, cached = train(**settings, prefix_cache="off"), train(**settings, prefix_cache="auto")
    assert cached["prefix_cache"]["layers_cached"] == 1
    a, b = _adapter(plain), _adapter(cached)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-6, msg=k)


def test_the_header_and_summary_report_it_and_a_stop_restores_the_model(tmp_path):
    prepared = prepare(RunConfig(**RUN, data=_qa_file(tmp_path)))
    events = []
    stop = {"now": False}
    trainer = Trainer(
        prepared,
        run_id="t",
        emit=events.append,
        should_stop=lambda: stop["now"],
        run_dir=tmp_path,
        randomness=RunRandomness.secret(),
    )
    header = trainer._started_event().prefix_cache
    assert header["layers_cached"] == 1 and header["layers"] == 2 and header["full_mb"] > 0
    trainer.set_training_mode()
    trainer.train_step(1)
    stack = trainer.prefix_cache.prefix.stack
    # a Stop within the adapted layers' forward: the step is discarded and the model keeps its whole layer stack
    stack[1].register_forward_pre_hook(lambda *_: stop.update(now=True))
    with pytest.raises(StopRequested):
        trainer.train_step(2)
    assert trainer.prefix_cache.prefix.parent.layers is stack and len(stack) == 2
    trainer.close_prefix_cache()
    report = trainer.prefix_cache_report()["prefix_cache"]
    assert report["built"] > 0 and report["build_seconds"] >= 0
    assert len(trainer.prefix_cache.store) == 0, "closing frees the states"

    # the app's header shows it: what will be cached while the run trains, what it did once it ended
    from workbench.app.live import header_html
    from workbench.events import RunEnded
    from workbench.present import RunView

    started = trainer._started_event()
    running = header_html(RunView.from_events("t", [started]), "running", None, now=0.0)
    assert 'id="wb-prefix-cache">prefix cache: layer 0 of 2 computed once per example' in running
    ended = RunEnded(run_id="t", status="stopped", reason="stopped", summary=trainer.prefix_cache_report())
    done = header_html(RunView.from_events("t", [started, ended]), "stopped", None, now=0.0)
    assert f"prefix cache: layer 0 of 2 for {report['examples']} examples" in done
    assert f"{report['hits']} of {report['hits'] + report['built']} example draws read it" in done


def test_the_config_knobs_are_grouped_keys():
    cfg = RunConfig().with_overrides(["performance.prefix_cache=off", "performance.prefix_cache_mb=16"])
    assert cfg.prefix_cache == "off" and cfg.prefix_cache_mb == 16
    assert cfg.to_grouped()["performance"]["prefix_cache_mb"] == 16
    keys = [row[0] for row in RunConfig.help_table(flat=False)]
    assert "performance.prefix_cache" in keys and "performance.prefix_cache_mb" in keys


# -- the real models: the default decoder (SmolLM2-135M, 30 layers) and the MiniLM encoder ---------------------------


def _real(spec: str, task: str, adapted: int) -> torch.nn.Module:
    from workbench.engine.models import ModelError, load_model

    try:
        model, _, _ = load_model(spec, task=task, device=torch.device("cpu"))
    except ModelError as err:
        pytest.skip(str(err))
    model = attach_lora(model, task=task, r=4, alpha=16, dropout=0.0, target_modules="auto", last_layers=adapted)
    _nonzero_lora_b(model)
    return model.eval()


@pytest.mark.slow
@pytest.mark.parametrize("spec,task,adapted", [("default", "causal_lm", 4), ("minilm", "classification", 2)])
def test_the_real_models_cached_gradients_equal_the_uncached_ones(spec, task, adapted):
    model = _real(spec, task, adapted)
    lengths = [14, 9, 20, 6]
    batch = _batch(lengths, task=task, seed=3)
    layers = model.config.num_hidden_layers
    cache = _cache(model, lengths=lengths)
    assert cache.prefix.first == layers - adapted
    for rows in ([0, 1, 2], [3, 1, 0]):  # built, then read beside a new one with other padding
        got = _per_example(model, _rows(batch, rows), task=task, cache=cache, indices=rows)
        _assert_same(got, _per_example(model, _rows(batch, rows), task=task))


@pytest.mark.slow
def test_a_data_parallel_run_caches_per_rank_and_matches_one_process_uncached():
    """Two ranks hosted by a Session, each caching its own shard's prefix, against one process without the cache
    (seeded mode: the union of the ranks' samples is the one-process sample; test_distributed.py)."""
    from test_distributed import ORACLE, _assert_same_run, _session

    settings = dict(ORACLE, lora_layers=1)
    two = _session(**settings).run()
    assert two["prefix_cache"]["layers_cached"] == 1, two.get("prefix_cache")
    _assert_same_run(train(**settings, prefix_cache="off"), two)


def test_evaluations_read_the_validation_examples_prefix_and_score_as_without_it(tmp_path):
    """The validation examples' prefix is kept between evaluations (eval mode); the loss and the accuracy equal the
    whole model's, on the first evaluation (built) and the next (read)."""
    from workbench.engine.validation import Validation

    prepared = prepare(RunConfig(**dict(RUN, eval_max_examples=6), data=_qa_file(tmp_path, n=40)))
    trainer = Trainer(prepared, run_id="t", emit=lambda e: None, run_dir=tmp_path, randomness=RunRandomness.secret())
    cached = trainer.validation
    assert cached.prefix_cache is not None
    _nonzero_lora_b(prepared.model)
    plain = Validation(prepared, autocast=_null)
    for _ in range(2):
        got, want = cached.metrics(cached.examples), plain.metrics(plain.examples)
        assert got["val_loss"] == pytest.approx(want["val_loss"], rel=1e-5)
        assert got["accuracy"] == want["accuracy"]
    report = cached.prefix_cache.report()
    assert report["built"] == len(cached.examples) and report["hits"] == len(cached.examples)


@pytest.mark.parametrize("layers", [2, 3])
def test_the_head_on_target_positions_only_gives_the_same_losses_and_per_example_gradients(layers):
    """losses.target_loss (training: the LM head on the positions that predict a target) against per_example_loss's
    head from the earliest target on, per example: rows whose answers start at different places."""
    model = _llama(layers=layers, adapted=1)
    batch = _batch([11, 4, 9, 7, 13], task="causal_lm", seed=4)
    batch["labels"][2] = -100  # a row with no target: loss 0, gradient 0
    full = _per_example(model, batch, task="causal_lm")
    hooks = PerExampleGrads(model)
    hooks.enabled = True
    try:
        loss, logits = per_example_loss(model, batch, task="causal_lm", targets_only=True)
        assert logits is None
        loss.sum().backward()
        gathered = {name: g.weight.clone() for name, g in hooks.grads.items()}
    finally:
        hooks.remove()
        model.zero_grad(set_to_none=True)
    torch.testing.assert_close(loss.detach(), full.pop("loss"), rtol=1e-5, atol=1e-6)
    assert set(gathered) == set(full)
    for name in full:
        torch.testing.assert_close(gathered[name], full[name], rtol=1e-4, atol=1e-6, msg=name)
    assert all(g[2].abs().sum() == 0 for g in gathered.values())
