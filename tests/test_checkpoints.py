"""Checkpoints stay whole: a save killed at any moment leaves the previous checkpoint or the new one, a damaged or
mismatched checkpoint is refused in one line, and a diverging run stops at its first NaN with its last good
checkpoint kept."""

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from llmcourse import train as train_module
from llmcourse.gpt import GPT, GPTConfig
from llmcourse.tokenizer import CharTokenizer
from llmcourse.train import TrainConfig, TrainingDiverged, load_checkpoint, run, save_checkpoint

TEXT = "the cat sat on the mat. the dog sat on the log.\n" * 60


def small_gpt(vocab_size: int, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=vocab_size, block_size=8, n_layer=1, n_head=2, n_embd=16))


def saved(tmp_path, name="m"):
    tok = CharTokenizer.train(TEXT)
    model = small_gpt(tok.vocab_size)
    return model, tok, save_checkpoint(tmp_path, model, tok, name=name)


# -- killed while saving ------------------------------------------------------------------------------------------

SAVER = textwrap.dedent("""
    import signal, sys, torch
    signal.signal(signal.SIGINT, signal.default_int_handler)  # Ctrl-C raises here even if the parent ignores it
    from llmcourse.gpt import GPT, GPTConfig
    from llmcourse.tokenizer import CharTokenizer
    from llmcourse.train import save_checkpoint
    folder, text = sys.argv[1], sys.argv[2]
    toks = [CharTokenizer.train(text), CharTokenizer.train(text + "XYZ")]  # two tokenizers, two vocab sizes
    models = []
    for seed, tok in enumerate(toks):
        torch.manual_seed(seed)
        models.append(GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=8, n_layer=2, n_head=2, n_embd=64)))
    save_checkpoint(folder, models[0], toks[0], training={"seed": 0})
    print("ready", flush=True)
    i = 1
    while True:  # alternate between the two checkpoints until killed
        save_checkpoint(folder, models[i % 2], toks[i % 2], training={"seed": i % 2})
        i += 1
""")


def expected_checkpoints(text):
    out = {}
    for seed, tok in enumerate([CharTokenizer.train(text), CharTokenizer.train(text + "XYZ")]):
        torch.manual_seed(seed)
        model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=8, n_layer=2, n_head=2, n_embd=64))
        out[seed] = (model.state_dict(), tok.chars)
    return out


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_a_save_killed_at_any_moment_leaves_one_whole_checkpoint(tmp_path, sig):
    expected = expected_checkpoints(TEXT)
    rng = random.Random(sig)
    for attempt in range(6):
        folder = tmp_path / f"run{attempt}"
        proc = subprocess.Popen([sys.executable, "-c", SAVER, str(folder), TEXT], stdout=subprocess.PIPE,
                                env=os.environ | {"OMP_NUM_THREADS": "1"})
        assert proc.stdout.readline().strip() == b"ready"
        time.sleep(rng.uniform(0.0, 0.3))  # somewhere inside some save
        proc.send_signal(sig)
        for _ in range(6):  # an interrupt that lands inside a finalizer is only printed: press Ctrl-C again
            try:
                proc.wait(timeout=10)
                break
            except subprocess.TimeoutExpired:
                proc.send_signal(sig)
        else:
            proc.kill()
            pytest.fail(f"the saver did not stop within 60 s of {sig.name}")
        model, tok, meta = load_checkpoint(folder, name="tiny_gpt", device="cpu")
        state, chars = expected[meta["training"]["seed"]]
        assert tok.chars == chars, "the tokenizer belongs to another save than the record"
        for key, value in model.state_dict().items():
            assert torch.equal(value, state[key]), f"{key} belongs to another save than the record"
        names = {p.name for p in folder.iterdir() if not p.name.startswith(".")}
        assert len(names) <= 5, f"old files pile up: {sorted(names)}"


def test_a_save_removes_the_files_it_replaces(tmp_path):
    model, tok, first = saved(tmp_path)
    with torch.no_grad():
        model.transformer.wte.weight.add_(1.0)
    second = save_checkpoint(tmp_path, model, tok, name="m")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in second.values())
    assert first["weights"] != second["weights"] and not first["weights"].exists()


def test_a_checkpoint_of_another_name_is_left_alone(tmp_path):
    saved(tmp_path, name="m")
    model, tok, other = saved(tmp_path, name="m.v2")
    save_checkpoint(tmp_path, model, tok, name="m")  # replaces m, must not touch m.v2's files
    load_checkpoint(tmp_path, name="m.v2", device="cpu")


# -- damaged or mismatched ----------------------------------------------------------------------------------------

def edit_meta(path, change):
    meta = json.loads(path.read_text())
    change(meta)
    path.write_text(json.dumps(meta))


def test_damaged_checkpoints_are_refused_in_one_line(tmp_path):
    cases = {
        "truncated weights": lambda p: p["weights"].write_bytes(p["weights"].read_bytes()[:1000]),
        "missing weights": lambda p: p["weights"].unlink(),
        "meta not JSON": lambda p: p["meta"].write_text("{not json"),
        "meta of another kind": lambda p: p["meta"].write_text("[1, 2]"),
        "n_head edited": lambda p: edit_meta(p["meta"], lambda m: m["gpt"].update(n_head=4)),
        "shape edited": lambda p: edit_meta(p["meta"], lambda m: m["gpt"].update(n_embd="sixteen")),
        "called a Llama": lambda p: edit_meta(p["meta"], lambda m: m.update(llama=m.pop("gpt"))),
        "two models": lambda p: edit_meta(p["meta"], lambda m: m.update(llama=m["gpt"])),
        "tokenizer swapped": lambda p: p["tokenizer"].write_text('{"type": "char", "chars": "ab"}'),
    }
    for case, damage in cases.items():
        folder = tmp_path / case.replace(" ", "_")
        *_, paths = saved(folder)
        damage(paths)
        with pytest.raises(ValueError) as info:
            load_checkpoint(folder, name="m", device="cpu")
        message = str(info.value)
        assert "\n" not in message and "checkpoint" in message, f"{case}: {message!r}"


def test_a_tokenizer_shorter_than_the_embedding_table_is_refused(tmp_path):
    model, tok, paths = saved(tmp_path)
    short = CharTokenizer.train("abc")
    short.save(paths["tokenizer"])  # and the record updated to match, as a careless hand edit would
    edit_meta(paths["meta"], lambda m: m["sha256"].update(tokenizer=train_module._sha256(paths["tokenizer"])))
    with pytest.raises(ValueError, match=r"has \d+ tokens but the model's embedding table has"):
        load_checkpoint(tmp_path, name="m", device="cpu")
    with pytest.raises(ValueError, match="tokenizer has"):
        save_checkpoint(tmp_path, model, short, name="m")


@pytest.mark.parametrize("name", ["../x", "", ".hidden", "a/b", "x" * 101, 3])
def test_checkpoint_names_stay_inside_the_folder(tmp_path, name):
    model, tok, _ = saved(tmp_path / "ok")
    with pytest.raises(ValueError, match="checkpoint name must be"):
        save_checkpoint(tmp_path / "out", model, tok, name=name)
    assert not (tmp_path / "out").exists() and not (tmp_path / "x.json").exists()


def test_the_first_format_still_loads(tmp_path):
    """Checkpoints written before files were named by their hash: NAME.safetensors, NAME.tokenizer.json."""
    from safetensors.torch import save_file

    tok = CharTokenizer.train(TEXT)
    model = small_gpt(tok.vocab_size)
    save_file({k: v for k, v in model.state_dict().items() if k != "lm_head.weight"}, tmp_path / "m.safetensors")
    tok.save(tmp_path / "m.tokenizer.json")
    (tmp_path / "m.json").write_text(json.dumps({"format": train_module.FORMAT, "version": 1,
                                                 "gpt": model.config.__dict__, "training": {}}))
    loaded, *_ = load_checkpoint(tmp_path, name="m", device="cpu")
    assert torch.equal(loaded.transformer.wte.weight, model.transformer.wte.weight)
    save_checkpoint(tmp_path, loaded, tok, name="m")  # the new format replaces the old files
    assert not (tmp_path / "m.safetensors").exists()


# -- diverging runs -----------------------------------------------------------------------------------------------

def test_a_diverging_run_stops_at_the_first_nan_and_keeps_its_last_good_checkpoint(tmp_path, monkeypatch):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    real_step, calls = train_module.training_step, []

    def step_that_diverges(model, optimizer, x, y, *, clip):
        calls.append(1)
        loss = real_step(model, optimizer, x, y, clip=clip)
        return float("nan") if len(calls) == 3 else loss

    monkeypatch.setattr(train_module, "training_step", step_that_diverges)
    config = TrainConfig(steps=6, batch_size=2, warmup_steps=1, eval_every=2, eval_tokens=64)
    shape = dict(n_layer=1, n_head=2, n_embd=16, block_size=8)
    with pytest.raises(TrainingDiverged, match=r"at step 3 .*last good checkpoint \(after step 2\)"):
        run(tmp_path / "out", corpus=corpus, tokenizer="char", shape=shape, config=config, progress=False)
    assert len(calls) == 3, "training must stop at the step whose loss is not finite"
    model, tok, meta = load_checkpoint(tmp_path / "out", device="cpu")
    assert meta["training"]["steps_done"] == 2
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_a_huge_learning_rate_stops_with_a_message(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    config = TrainConfig(steps=20, batch_size=2, lr=1e6, min_lr=1e5, warmup_steps=1, eval_every=10, eval_tokens=64)
    with pytest.raises(TrainingDiverged, match="lower the learning rate"):
        run(tmp_path / "out", corpus=corpus, tokenizer="char", shape=dict(n_layer=1, n_head=2, n_embd=16,
            block_size=8), config=config, progress=False)
