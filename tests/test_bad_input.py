"""A user's mistake gets one clear line: the error names the argument and what is allowed, of the expected type,
never a deep error from inside NumPy or PyTorch and never a silently wrong result. Each row is one mistake."""

import os
import subprocess
import sys
import traceback

import pytest
import torch

from llmcourse import cli, runtime
from llmcourse.batching import Request, generate_batch, serve_continuous, serve_static, simulate_schedule
from llmcourse.generate import MAX_NEW_TOKENS, beam_search, generate
from llmcourse.gpt import GPT, GPTConfig, attention_weights, load_gpt2, random_gpt
from llmcourse.quantization import QuantizedTensor, quantize_groupwise_torch, quantize_model
from llmcourse.tokenizer import load_tokenizer
from llmcourse.train import TrainConfig

CONFIG = GPTConfig(vocab_size=50, block_size=32, n_layer=1, n_head=2, n_embd=16)
MODEL = random_gpt(CONFIG)


def nan_model() -> GPT:
    model = random_gpt(CONFIG)
    with torch.no_grad():
        model.transformer.h[0].mlp.c_fc.weight[0, 0] = float("nan")
    return model


def tokenizer_file(tmp_path, content: str):
    path = tmp_path / "tok.json"
    path.write_text(content)
    return path


PROMPT = torch.tensor([1, 2, 3])

# (case, call, expected exception, words the message must contain)
CASES = [
    # generation: ids, counts and special tokens
    ("generate_batch out-of-vocab id", lambda: generate_batch(MODEL, [[1, 99]], 2), ValueError, ["prompt 0", "0..49"]),
    ("generate_batch negative id", lambda: generate_batch(MODEL, [[-1, 2]], 2), ValueError, ["prompt 0", "-1"]),
    ("generate_batch float ids", lambda: generate_batch(MODEL, [[1.7, 2.2]], 2), TypeError, ["prompt 0", "1.7"]),
    ("generate_batch a string prompt", lambda: generate_batch(MODEL, ["hello"], 2), TypeError, ["prompt 0", "encode"]),
    ("generate_batch pad_id >= vocab", lambda: generate_batch(MODEL, [[1], [2, 3]], 2, pad_id=50), ValueError,
     ["pad_id", "0..49"]),
    ("generate_batch eos_id out of range", lambda: generate_batch(MODEL, [[1]], 2, eos_id=77), ValueError,
     ["eos_id", "77"]),
    ("generate_batch float max_new_tokens", lambda: generate_batch(MODEL, [[1]], 2.5), TypeError,
     ["max_new_tokens", "2.5"]),
    ("generate huge max_new_tokens", lambda: generate(MODEL, PROMPT, 10 ** 9), ValueError,
     ["max_new_tokens", f"{MAX_NEW_TOKENS:,}", "hours"]),
    ("generate float max_new_tokens", lambda: generate(MODEL, PROMPT, 3.0), TypeError, ["max_new_tokens"]),
    ("generate eos_id a float", lambda: generate(MODEL, PROMPT, 2, eos_id=1.5), TypeError, ["eos_id"]),
    ("generate out-of-vocab prompt", lambda: generate(MODEL, torch.tensor([1, 50]), 2), ValueError,
     ["prompt_ids", "0..49"]),
    ("beam_search out-of-vocab prompt", lambda: beam_search(MODEL, torch.tensor([60]), 2, 2), ValueError,
     ["prompt_ids", "0..49"]),
    ("beam_search negative id", lambda: beam_search(MODEL, torch.tensor([-3]), 2, 2), ValueError, ["prompt_ids"]),
    ("serve_continuous out-of-vocab id", lambda: serve_continuous(MODEL, [Request(0, (1, 500), 2)], 2), ValueError,
     ["request 0", "500"]),
    ("serve_static float max_new_tokens", lambda: serve_static(MODEL, [Request(0, (1,), 2.5)], 2), TypeError,
     ["max_new_tokens", "2.5"]),
    ("serve_continuous float ids", lambda: serve_continuous(MODEL, [Request(0, (1.5,), 2)], 2), TypeError,
     ["request 0", "1.5"]),
    ("the model's forward with an out-of-vocab id", lambda: MODEL(torch.tensor([[1, 99]])), ValueError,
     ["idx", "0..49"]),
    ("the model's forward with a list", lambda: MODEL([[1, 2]]), TypeError, ["idx", "torch.tensor"]),
    ("attention_weights of a missing layer", lambda: attention_weights(MODEL, torch.tensor([[1, 2]]), layer=5),
     ValueError, ["layer", "0..0"]),
    ("load_gpt2 of a number", lambda: load_gpt2(5), TypeError, ["source", "int"]),
    ("simulate_schedule with a negative length", lambda: simulate_schedule([3, -1], 2), ValueError,
     ["output_lengths", "-1"]),
    ("simulate_schedule with no requests", lambda: simulate_schedule([], 2), ValueError, ["output_lengths"]),
    ("simulate_schedule with a scheduler that never frees a row",
     lambda: simulate_schedule([3, 2], 2, scheduler_step=lambda slots, finished, waiting: (slots, [], [])),
     RuntimeError, ["no progress", "scheduler_step"]),
    # quantization
    ("quantize a (4, 0) tensor", lambda: quantize_groupwise_torch(torch.zeros(4, 0), 8, 1), ValueError,
     ["non-empty", "(4, 0)"]),
    ("QuantizedTensor of a (4, 0) tensor", lambda: QuantizedTensor(torch.zeros(4, 0), 8), ValueError, ["(4, 0)"]),
    ("quantize with group size 0", lambda: quantize_groupwise_torch(torch.ones(4, 4), 8, 0), ValueError,
     ["group_size", "divisor"]),
    ("quantize integer weights", lambda: quantize_groupwise_torch(torch.ones(4, 4, dtype=torch.long), 8, 2),
     TypeError, ["floating-point"]),
    ("quantize NaN weights", lambda: quantize_groupwise_torch(torch.tensor([[float("nan"), 1.0]]), 8, 2),
     ValueError, ["NaN"]),
    ("int4 scale beyond float16", lambda: QuantizedTensor(torch.full((2, 32), 5e5), 4, 32), ValueError,
     ["float16", "65504"]),
    ("int8 kernel on a NaN weight", lambda: quantize_model(nan_model(), "int8-kernel"), ValueError,
     ["c_fc.weight", "NaN"]),
    ("unknown scheme", lambda: quantize_model(MODEL, "int3"), ValueError, ["int3", "int4-g"]),
    # configurations
    ("GPTConfig with a string", lambda: GPTConfig(n_layer="4"), TypeError, ["n_layer", "'4'"]),
    ("GPTConfig with a float", lambda: GPTConfig(n_embd=16.0, n_head=2), TypeError, ["n_embd"]),
    ("TrainConfig lr NaN", lambda: TrainConfig(lr=float("nan")), ValueError, ["lr"]),
]


@pytest.mark.parametrize("case, call, error, words", CASES, ids=[c[0] for c in CASES])
def test_a_mistake_gets_one_clear_line(case, call, error, words):
    with pytest.raises(error) as info:
        call()
    message = str(info.value)
    assert "\n" not in message, f"{case}: the message takes several lines: {message!r}"
    for word in words:
        assert word in message, f"{case}: the message should mention {word!r}: {message!r}"
    frames = traceback.extract_tb(info.value.__traceback__)
    assert "site-packages" not in frames[-1].filename, f"{case}: raised deep inside a library: {frames[-1]}"


@pytest.mark.parametrize("content, words", [
    ("{not json", ["is not a tokenizer file"]),
    ("[]", ["is not a tokenizer file"]),
    ('{"type": "bpe"}', ["damaged bpe tokenizer", "'merges'"]),
    ('{"type": "char", "chars": 5}', ["damaged char tokenizer", "'chars'"]),
    ('{"type": "bpe", "merges": [[1]]}', ["damaged bpe tokenizer"]),
    ('{"type": "words"}', ["unknown tokenizer type"]),
])
def test_a_malformed_tokenizer_file_is_named(tmp_path, content, words):
    with pytest.raises(ValueError) as info:
        load_tokenizer(tokenizer_file(tmp_path, content))
    assert "\n" not in str(info.value) and "tok.json" in str(info.value)
    for word in words:
        assert word in str(info.value)


# -- the device, chosen in one place --------------------------------------------------------------------------------

@pytest.fixture
def device_env(monkeypatch):
    def set_to(value):
        monkeypatch.setenv(runtime.DEVICE_ENV, value)
        runtime.get_device.cache_clear()
    yield set_to
    monkeypatch.delenv(runtime.DEVICE_ENV, raising=False)
    runtime.get_device.cache_clear()


@pytest.mark.parametrize("value, words", [("bogus", ["'bogus' is not a device", "cpu, cuda"]),
                                          ("cuda", ["no CUDA", "unset it"]), ("tpu", ["not a device"])])
def test_an_unusable_device_setting_is_refused(device_env, value, words):
    if value == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    device_env(value)
    with pytest.raises(ValueError) as info:
        runtime.get_device()
    assert all(word in str(info.value) for word in words), str(info.value)


def test_check_reports_an_unusable_device(device_env, capsys):
    device_env("bogus")
    assert cli.main(["check"]) == 1
    out = capsys.readouterr().out
    assert "NOT AVAILABLE" in out and "'bogus' is not a device" in out


# -- the command line: exit 2, one line, no traceback ---------------------------------------------------------------

SMALL = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "8", "--steps", "2", "--batch-size",
         "2", "--warmup", "1", "--eval-every", "1", "--vocab-size", "260"]


def corpus_file(tmp_path, content: bytes) -> str:
    path = tmp_path / "corpus.txt"
    path.write_bytes(content)
    return str(path)


TEXT = b"the cat sat on the mat. " * 40
CLI_CASES = [
    ("missing corpus", lambda t: ["--out", str(t / "o"), "--corpus", str(t / "nope.txt")], ["does not exist"]),
    ("binary corpus", lambda t: ["--out", str(t / "o"), "--corpus", corpus_file(t, b"\xff\xfe\x00" * 9)],
     ["not UTF-8"]),
    ("empty corpus", lambda t: ["--out", str(t / "o"), "--corpus", corpus_file(t, b"  \n")], ["empty"]),
    ("name escaping --out", lambda t: ["--out", str(t / "o"), "--name", "../x", "--corpus", corpus_file(t, TEXT)],
     ["checkpoint name", "'../x'"]),
    ("empty name", lambda t: ["--out", str(t / "o"), "--name", "", "--corpus", corpus_file(t, TEXT)],
     ["checkpoint name"]),
    ("--out is a file", lambda t: ["--out", corpus_file(t, TEXT), "--corpus", corpus_file(t, TEXT)],
     ["checkpoint folder"]),
    ("bad shape", lambda t: ["--out", str(t / "o"), "--corpus", corpus_file(t, TEXT), "--n-head", "3"],
     ["divisible by n_head"]),
    ("negative lr", lambda t: ["--out", str(t / "o"), "--corpus", corpus_file(t, TEXT), "--lr", "-1"], ["lr"]),
    ("diverging lr", lambda t: ["--out", str(t / "o"), "--corpus", corpus_file(t, TEXT), "--lr", "1e6"],
     ["diverged", "lower the learning rate"]),
]


@pytest.mark.parametrize("case, args, words", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_train_mistakes_exit_2_with_one_line(tmp_path, capsys, case, args, words):
    code = cli.main(["train", *SMALL, *args(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, f"{case}: exit code {code}"
    assert err and err[-1].startswith("llmcourse train: error: "), f"{case}: {err}"
    assert not any("Traceback" in line for line in err)
    assert all(word in err[-1] for word in words), f"{case}: {err[-1]}"


def test_a_bad_device_setting_is_one_line_from_a_fresh_process(tmp_path):
    """As a user runs it: a new process, the variable set in the shell; no traceback."""
    env = os.environ | {runtime.DEVICE_ENV: "bogus", "LLMCOURSE_DEBUG": ""}
    result = subprocess.run([sys.executable, "-m", "llmcourse", "train", *SMALL, "--out", str(tmp_path / "o"),
                             "--corpus", corpus_file(tmp_path, TEXT)], capture_output=True, text=True, env=env,
                            timeout=300)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("llmcourse train: error: LLMCOURSE_DEVICE='bogus'")
    assert not (tmp_path / "o" / "tiny_gpt.json").exists()
