"""The package runs without solutions/: the student release leaves it out, and only the grader (through
`loader.reference`) may read it; the exercise loader hands out the package's own versions
(llmcourse.course.fallbacks)."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch

import llmcourse
from llmcourse.course import impl, loader

PACKAGE = Path(llmcourse.__file__).resolve().parent
# The course machinery whose job is solutions/ itself: the exercise loader and the grader (which call `reference`),
# loading an implementation folder, the catalog of exercises, generating the release from solutions/, and the CLI
# commands for those. Everything else is what notebooks and `llmcourse bench` run.
MACHINERY = {"course/loader.py", "course/impl.py", "course/catalog.py", "course/release.py", "cli.py"}


def _package_files() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p.relative_to(PACKAGE).parts[:2] != ("course", "grading"))


def test_only_the_loader_and_the_grader_use_reference():
    calls = re.compile(r"\breference\(|import[^\n]*\breference\b|loader\.reference\b")
    offenders = [f"{p.relative_to(PACKAGE)}:{n}: {line.strip()}" for p in _package_files()
                 if p.relative_to(PACKAGE).as_posix() != "course/loader.py"
                 for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if calls.search(line)]
    assert not offenders, "package code must use its own implementations, not solutions/:\n" + "\n".join(offenders)


def test_no_runtime_module_mentions_solutions():
    offenders = [f"{p.relative_to(PACKAGE)}:{n}: {line.strip()}" for p in _package_files()
                 if p.relative_to(PACKAGE).as_posix() not in MACHINERY
                 for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if "solutions" in line]
    assert not offenders, "only the course machinery may name solutions/:\n" + "\n".join(offenders)


@pytest.fixture
def one_thread():
    """Small models run fastest on one thread; on a busy machine extra threads mostly wait for each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def no_solutions(monkeypatch):
    """Every way into solutions/ raises: `loader.reference` and loading any module of an implementation folder."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"the package reached for solutions/ or exercises/ with {args[1:] or args}")

    monkeypatch.setattr(loader, "reference", refuse)
    monkeypatch.setattr(impl.Implementation, "module", refuse)


def test_the_package_runs_end_to_end_without_solutions(no_solutions, one_thread):
    from llmcourse.batching import Request, generate_batch, serve_continuous, serve_static, simulate_schedule
    from llmcourse.data import load_corpus, train_val_split
    from llmcourse.generate import beam_search, generate
    from llmcourse.gpt import GPT, GPTConfig
    from llmcourse.gradcheck import layer_checks
    from llmcourse.mlp_lm import SGD, Adam, Layers, MLPLanguageModel, Momentum, bigram_baseline
    from llmcourse.mlp_lm import train as train_mlp
    from llmcourse.ngram import BigramModel
    from llmcourse.pretrained import load_tiny_gpt
    from llmcourse.quantization import quantization_report, quantize_model
    from llmcourse.tokenizer import BPETokenizer
    from llmcourse.train import TrainConfig, evaluate, held_out_perplexity, train
    from llmcourse.widgets.attention import attention_maps, constructed_model, explorer_data
    from llmcourse.widgets.quantization import precompute, quantization_data
    from llmcourse.widgets.sampling import next_token_logits, sampling_data

    train_text, val_text = train_val_split(load_corpus()[:60_000])

    # tokenizer: train, encode, decode (English, Chinese, emoji)
    tok = BPETokenizer.train(train_text, vocab_size=300)
    sample = "The tokenizer's job is simple. 语言模型把文字变成数字。🙂"
    assert tok.decode(tok.encode(sample)) == sample and tok.vocab_size == 300

    # generation with the shipped model: greedy, temperature, top-k, top-p, beam search
    model, shipped = load_tiny_gpt("cpu")
    prompt = torch.tensor(shipped.encode("The function returns"))
    assert torch.equal(generate(model, prompt, 12, temperature=0.0),
                       generate(model, prompt, 12, temperature=0.0, use_cache=False))
    sampled = generate(model, prompt, 12, temperature=0.8, top_k=40, top_p=0.9, seed=0)
    assert torch.equal(sampled, generate(model, prompt, 12, temperature=0.8, top_k=40, top_p=0.9, seed=0))
    beams, scores = beam_search(model, prompt, 6, beam_width=3, eos_id=shipped.encode(".")[0])
    assert beams.shape == (3, len(prompt) + 6) and bool((scores[:-1] >= scores[1:]).all())

    # batching: padded batches, static and continuous serving
    prompts = [shipped.encode(text) for text in ("def f(x):", "The", "Return the value of")]
    batch = generate_batch(model, prompts, 8, temperature=0.9, top_p=0.9, seed=1)
    alone = generate(model, torch.tensor(prompts[2]), 8, temperature=0.9, top_p=0.9, seed=1)
    assert torch.equal(batch[2], alone)
    requests = [Request(i, tuple(prompts[i % 3]), 2 + i) for i in range(5)]
    assert serve_continuous(model, requests, 2).outputs() == serve_static(model, requests, 2).outputs()
    assert len(simulate_schedule([3, 1, 2], 2)) == 3

    # quantization: int8 and int4 models, their forward passes, the report
    x = prompt[None]
    for scheme in ("int8", "int4-g32", "int8-kernel"):
        quantized = quantize_model(model, scheme)
        with torch.no_grad():
            assert torch.isfinite(quantized(x)).all()
    rows = quantization_report(model, val_text[:2000], ("fp32", "int8", "int4-g32"), tokenizer=shipped,
                               measure_speed=False)
    assert [r["scheme"] for r in rows] == ["fp32", "int8", "int4-g32"]

    # the bigram baseline, training a few steps, evaluation
    train_ids, val_ids = tok.encode(train_text), tok.encode(val_text)
    assert 1 < BigramModel.fit(train_ids, tok.vocab_size).perplexity(val_ids) < tok.vocab_size
    gpt = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16))
    history = train(gpt, train_ids, val_ids, TrainConfig(steps=3, batch_size=2, warmup_steps=1, eval_every=3),
                    progress=False)
    assert len(history.train_loss) == 3 and evaluate(gpt, val_ids[:100]).perplexity > 1
    assert held_out_perplexity(model, shipped, val_text, max_tokens=300) > 1

    # the MLP of notebook 03 on its own layers and optimisers
    chars = sorted(set(train_text + val_text))
    train_chars, val_chars = (np.array([chars.index(c) for c in t[:3000]]) for t in (train_text, val_text))
    for optimizer in (SGD(0.5), Momentum(0.1), Adam(0.01)):
        mlp = MLPLanguageModel(len(chars), context=4, embed_dim=4, hidden=16)
        train_mlp(mlp, optimizer, train_chars, steps=3, batch_size=16, val_ids=val_chars, evals=1)
    assert len(mlp.sample(list(train_chars[:4]), 5, np.random.default_rng(0))) == 9
    assert bigram_baseline(train_chars, val_chars, len(chars), context=4) > 1
    assert len(layer_checks(Layers.default())) == 4

    # the widgets' computations: attention maps, quantization table, sampling
    maps = attention_maps(constructed_model(), "the cat sat")
    assert "attention" in explorer_data(maps, "the cat sat", 0, 5, constructed_model().head_names)["summary"]
    table = precompute(model.transformer.h[0].mlp.c_fc.weight)
    assert quantization_data(table, 4, 32)["compression"] > 1
    labels = [str(i) for i in range(shipped.vocab_size)]
    data = sampling_data(next_token_logits(model, shipped, "The function"), 0.8, 20, 0.9, labels=labels)
    assert 1 <= data["kept"] <= 20
