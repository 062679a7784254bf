"""The training code of notebook 05 (llmcourse.train), the `llmcourse train` command, checkpoints written
atomically, and the shipped tiny GPT (llmcourse.pretrained)."""

import math
import shlex

import pytest
import torch
import torch.nn.functional as F

from llmcourse import cli
from llmcourse.gpt import GPT, GPTConfig
from llmcourse.llama import Llama, LlamaConfig
from llmcourse.pretrained import ASSETS, load_tiny_gpt, load_tiny_llama, tiny_gpt_record, tiny_llama_record
from llmcourse.runtime import get_device
from llmcourse.tokenizer import CharTokenizer
from llmcourse.train import (
    TrainConfig, atomic_write, bigram_per_char_loss, evaluate, get_batch,
    held_out_perplexity, held_out_text, load_checkpoint, lr_at, per_char_loss, run, save_checkpoint, train,
)

TEXT = "the cat sat on the mat. the dog sat on the log.\n" * 60


def tiny_gpt(vocab_size: int, block_size: int = 8, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=vocab_size, block_size=block_size, n_layer=1, n_head=2, n_embd=16))


# -- schedule and batches -------------------------------------------------------------------------------------------

def test_lr_warms_up_linearly_then_decays_by_cosine_to_min_lr():
    config = TrainConfig(steps=100, lr=1e-3, min_lr=1e-4, warmup_steps=10)
    lrs = [lr_at(i, config) for i in range(config.steps)]
    assert lrs[:10] == pytest.approx([1e-3 * (i + 1) / 10 for i in range(10)], rel=1e-12)
    assert lrs[9] == pytest.approx(1e-3, rel=1e-12)  # the peak at the end of the warm-up
    assert lrs[-1] == pytest.approx(1e-4, rel=1e-12)  # min_lr at the last step
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:])), "the learning rate must not rise after the warm-up"


def test_lr_without_warmup_starts_at_the_peak():
    config = TrainConfig(steps=5, warmup_steps=0)
    assert lr_at(0, config) == pytest.approx(config.lr, rel=1e-12)


@pytest.mark.parametrize("bad", [dict(steps=0), dict(min_lr=1.0, lr=0.1), dict(warmup_steps=-1)])
def test_train_config_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        TrainConfig(**bad)


def test_batches_are_windows_and_targets_are_shifted_by_one():
    ids = torch.arange(100) * 3  # values reveal the positions they came from
    x, y = get_batch(ids, batch_size=7, block_size=9, generator=torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (7, 9)
    assert torch.equal(x[:, 1:], y[:, :-1])
    assert torch.equal(y - x, torch.full_like(x, 3)), "every target must be the token after its input"
    again, _ = get_batch(ids, batch_size=7, block_size=9, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x, again), "batches must depend only on the generator's seed"


def test_batch_needs_one_full_window():
    with pytest.raises(ValueError, match="block_size"):
        get_batch(torch.arange(5), batch_size=2, block_size=5)


# -- evaluation --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [2, 8, 9, 17, 30])
def test_evaluate_predicts_every_token_after_the_first_once(n):
    model = tiny_gpt(13)
    ids = torch.randint(13, (n,), generator=torch.Generator().manual_seed(n))
    got = evaluate(model, ids, batch_size=2)
    expected, T = 0.0, model.config.block_size
    with torch.no_grad():
        for start in range(0, n - 1, T):  # one window at a time, written out
            x, y = ids[start:start + T], ids[start + 1:start + T + 1]
            x = x[:len(y)]
            expected += F.cross_entropy(model(x[None])[0], y, reduction="sum").item()
    assert got.tokens == n - 1
    # float32 logits; batched windows sum in another order than one by one: float32 tolerances.
    assert got.total_nll == pytest.approx(expected, rel=1.3e-6, abs=1e-5)
    assert got.perplexity == pytest.approx(math.exp(got.loss), rel=1e-12)


def test_evaluate_restores_the_training_mode_and_rejects_one_token():
    model = tiny_gpt(5).train()
    evaluate(model, [1, 2, 3])
    assert model.training
    with pytest.raises(ValueError, match="at least 2"):
        evaluate(model, [1])


def test_per_char_loss_equals_per_token_loss_for_a_character_tokenizer():
    tok = CharTokenizer.train(TEXT)
    model = tiny_gpt(tok.vocab_size)
    text = TEXT[:200]
    per_token = evaluate(model, tok.encode(text)).loss
    assert per_char_loss(model, tok, text) == pytest.approx(per_token, rel=1e-12)
    assert held_out_perplexity(model, tok, text) == pytest.approx(math.exp(per_token), rel=1e-12)


def test_an_untrained_model_is_about_as_unsure_as_a_uniform_guess():
    tok = CharTokenizer.train(TEXT)
    ev = evaluate(tiny_gpt(tok.vocab_size), tok.encode(TEXT))
    assert ev.perplexity == pytest.approx(tok.vocab_size, rel=0.1)  # small random init: near-uniform logits


# -- training -------------------------------------------------------------------------------------------------------

def test_training_lowers_the_held_out_loss_and_is_reproducible():
    tok = CharTokenizer.train(TEXT)
    ids = tok.encode(TEXT)
    val_ids = ids[:200]
    config = TrainConfig(steps=20, batch_size=8, lr=1e-2, min_lr=1e-3, warmup_steps=5, eval_every=10)
    histories = []
    for _ in range(2):
        model = tiny_gpt(tok.vocab_size, block_size=16)
        before = evaluate(model, val_ids).loss
        histories.append(train(model, ids, val_ids, config, progress=False))
    history = histories[0]
    assert history.val_steps == [10, 20] and len(history.train_loss) == len(history.lr) == 20
    assert history.val_loss[-1] < 0.7 * before
    assert histories[0].train_loss == histories[1].train_loss, "same seed, same losses"
    assert not model.training, "train() leaves the model in eval mode"


def test_train_uses_the_given_step_function():
    tok = CharTokenizer.train(TEXT)
    calls = []

    def step(model, optimizer, x, y, *, clip):
        calls.append((tuple(x.shape), clip))
        return 0.0

    train(tiny_gpt(tok.vocab_size), tok.encode(TEXT), tok.encode(TEXT), TrainConfig(steps=3, batch_size=2,
          warmup_steps=1, clip=0.5), step=step, progress=False)
    assert calls == [((2, 8), 0.5)] * 3


# -- checkpoints ----------------------------------------------------------------------------------------------------

def test_checkpoint_round_trip(tmp_path):
    tok = CharTokenizer.train(TEXT)
    model = tiny_gpt(tok.vocab_size)
    paths = save_checkpoint(tmp_path, model, tok, name="m", training={"note": "test"})
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths.values())
    assert paths["weights"].name.startswith("m.") and paths["tokenizer"].name.endswith(".tokenizer.json")
    loaded, loaded_tok, meta = load_checkpoint(tmp_path, name="m", device="cpu")
    assert meta["training"] == {"note": "test"} and loaded_tok.chars == tok.chars
    assert not loaded.training
    assert loaded.lm_head.weight is loaded.transformer.wte.weight, "the output head stays tied to the embedding"
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), f"{name} changed in the round trip"
    assert {p.stat().st_mode & 0o777 for p in paths.values()} == {0o644}, "every file of a checkpoint is 0644"


@pytest.mark.parametrize("tied", [False, True])
def test_a_llama_checkpoint_round_trips(tmp_path, tied):
    from safetensors import safe_open

    tok = CharTokenizer.train(TEXT)
    torch.manual_seed(0)
    model = Llama(LlamaConfig(vocab_size=tok.vocab_size, block_size=16, n_layer=2, n_head=4, n_kv_head=2, n_embd=32,
                              hidden=96, tie_word_embeddings=tied))
    paths = save_checkpoint(tmp_path, model, tok, name="m")
    loaded, _, meta = load_checkpoint(tmp_path, name="m", device="cpu")
    assert type(loaded) is Llama and loaded.config == model.config and "gpt" not in meta
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), f"{name} changed in the round trip"
    assert (loaded.lm_head.weight is loaded.model.embed_tokens.weight) == tied
    with safe_open(str(paths["weights"]), "pt") as f:
        assert ("lm_head.weight" in f.keys()) != tied, "a tied head is stored once, an untied one on its own"


def test_load_checkpoint_says_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="llmcourse train"):
        load_checkpoint(tmp_path, name="nothing")


def test_an_interrupted_save_leaves_no_partial_file(tmp_path, monkeypatch):
    import safetensors.torch

    tok = CharTokenizer.train(TEXT)
    model = tiny_gpt(tok.vocab_size)
    save_checkpoint(tmp_path, model, tok)  # a complete earlier checkpoint
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def interrupted(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a checkpoint")
        raise KeyboardInterrupt  # as if Ctrl-C arrived in the middle of writing

    monkeypatch.setattr(safetensors.torch, "save_file", interrupted)
    with torch.no_grad():
        model.transformer.wte.weight.add_(1.0)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, model, tok)
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert after == before, "the interrupted save changed or added files: the earlier checkpoint must stay intact"


def test_atomic_write_into_a_new_folder_leaves_nothing_on_error(tmp_path):
    def fail(tmp):
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(tmp_path / "sub" / "file.bin", fail)
    assert list((tmp_path / "sub").iterdir()) == []


# -- the command ----------------------------------------------------------------------------------------------------

def test_llmcourse_train_short_run(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    out = tmp_path / "ckpt"
    args = ["train", "--out", str(out), "--corpus", str(corpus), "--tokenizer", "bpe", "--vocab-size", "270",
            "--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16", "--steps", "4",
            "--batch-size", "4", "--warmup", "2", "--eval-every", "2", "--seed", "0"]
    assert cli.main(args) == 0
    assert "held-out perplexity per character" in capsys.readouterr().out
    model, tok, meta = load_checkpoint(out, device="cpu")
    record = meta["training"]
    assert tok.vocab_size == 270 and model.config.n_embd == 16
    assert record["history"]["val_steps"] == [2, 4] and len(record["history"]["train_loss"]) == 4
    # The record's figure is the loaded model's: the weights round-trip exactly, the evaluation is deterministic.
    val_ids = tok.encode(held_out_text(corpus))
    assert evaluate(model, val_ids).loss == pytest.approx(record["val_loss_per_token"], rel=1e-12)
    # The recorded command parses back into the same options.
    parsed = cli.build_parser().parse_args(shlex.split(record["command"])[1:])
    assert vars(parsed) | {"func": None} == vars(cli.build_parser().parse_args(args)) | {"func": None}


def test_llmcourse_train_trains_a_llama(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    args = ["train", "--out", str(tmp_path / "ckpt"), "--name", "l", "--corpus", str(corpus), "--vocab-size", "270",
            "--arch", "llama", "--n-layer", "1", "--n-head", "4", "--n-kv-head", "1", "--n-embd", "24",
            "--block-size", "16", "--steps", "4", "--batch-size", "4", "--warmup", "2", "--eval-every", "2"]
    assert cli.main(args) == 0
    model, tok, meta = load_checkpoint(tmp_path / "ckpt", name="l", device="cpu")
    assert type(model) is Llama and model.config.n_kv_head == 1 and not model.config.tie_word_embeddings
    assert model.config.hidden == 64, "the default SwiGLU width is 8/3 n_embd rounded up to a multiple of 32"
    parsed = cli.build_parser().parse_args(shlex.split(meta["training"]["command"])[1:])
    assert vars(parsed) | {"func": None} == vars(cli.build_parser().parse_args(args)) | {"func": None}


def test_a_llama_trains_reproducibly(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    config = TrainConfig(steps=3, batch_size=2, warmup_steps=1, eval_every=3, eval_tokens=64)
    shape = dict(n_layer=1, n_head=2, n_kv_head=1, n_embd=16, hidden=48, block_size=8)
    for out in ("a", "b"):
        run(tmp_path / out, corpus=corpus, tokenizer="char", arch="llama", shape=shape, config=config, progress=False)
    first, second = (load_checkpoint(tmp_path / out, device="cpu")[0].state_dict() for out in ("a", "b"))
    assert all(torch.equal(first[k], second[k]) for k in first), "the same seed must give the same weights"


@pytest.mark.parametrize("option", [["--n-kv-head", "2"], ["--hidden", "64"], ["--tie-head"]])
def test_llama_options_need_arch_llama(tmp_path, capsys, option):
    assert cli.main(["train", "--out", str(tmp_path / "o"), *option]) == 2
    assert "only apply to --arch llama" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_run_rejects_an_unknown_architecture(tmp_path):
    with pytest.raises(ValueError, match="arch must be one of"):
        run(tmp_path, arch="mamba")


def test_llmcourse_train_rejects_a_bad_tokenizer():
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["train", "--out", "x", "--tokenizer", "words"])


# -- the shipped checkpoint -----------------------------------------------------------------------------------------

def test_the_shipped_checkpoint_is_small_and_recorded():
    sizes = sum(p.stat().st_size for p in ASSETS.glob("tiny_gpt.*"))
    assert sizes < 10 * 2 ** 20, f"the shipped checkpoint takes {sizes / 2 ** 20:.1f} MB; keep it under 10 MB"
    record = tiny_gpt_record()
    assert record["command"].startswith("llmcourse train ")
    cli.build_parser().parse_args(shlex.split(record["command"])[1:])  # a valid command


@pytest.fixture(scope="module")
def shipped():
    return load_tiny_gpt()


def test_load_tiny_gpt(shipped):
    model, tok = shipped
    assert not model.training and next(model.parameters()).device.type == get_device().type
    ids = tok.encode("def ")
    logits = model(torch.tensor([ids], device=get_device()))
    assert logits.shape == (1, len(ids), tok.vocab_size)
    other, _ = load_tiny_gpt(device="cpu")
    assert other is not model, "each call gives a fresh model, so one notebook's changes do not leak into another"


@pytest.mark.parametrize("load, record", [(load_tiny_gpt, tiny_gpt_record), (load_tiny_llama, tiny_llama_record)],
                         ids=["gpt", "llama"])
def test_shipped_models_beat_the_bigram_baseline_on_held_out_text(load, record):
    model, tok = load()
    from llmcourse.data import load_corpus, train_val_split

    train_text, val_text = train_val_split(load_corpus())
    ours = held_out_perplexity(model, tok, val_text)
    bigram = math.exp(bigram_per_char_loss(tok, train_text, val_text))
    assert ours < 0.85 * bigram, f"the shipped {type(model).__name__}'s held-out perplexity per character " \
                                 f"{ours:.3f} should beat the bigram baseline's {bigram:.3f} clearly"
    assert ours == pytest.approx(record()["val_perplexity_per_char"], rel=1e-6)
