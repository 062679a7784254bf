"""The small Llama shipped with the course (llmcourse/assets/tiny_llama.*, notebook 11): the same corpus, tokenizer,
trainer and schedule as the tiny GPT, about as many parameters, grouped-query attention; loaded through the same
checked checkpoint machinery. (That it beats the bigram baseline is tested with the GPT's, in test_train.py.)"""

import shlex
import shutil

import pytest
import torch

from llmcourse import cli
from llmcourse.generate import generate
from llmcourse.gpt import KVCache
from llmcourse.llama import Llama
from llmcourse.pretrained import ASSETS, LLAMA_NAME, load_tiny_gpt, load_tiny_llama, tiny_gpt_record, \
    tiny_llama_record
from llmcourse.timing import torch_calls
from llmcourse.train import _sha256, checkpoint_paths, load_checkpoint


@pytest.fixture(scope="module")
def llama():
    return load_tiny_llama("cpu")


@pytest.fixture(scope="module")
def gpt():
    return load_tiny_gpt("cpu")


def test_the_shipped_llama_is_small_and_recorded():
    size = sum(p.stat().st_size for p in ASSETS.glob(f"{LLAMA_NAME}.*"))
    assert size < 5 * 2 ** 20, f"the shipped Llama takes {size / 2 ** 20:.1f} MB; keep it to a few MB"
    record = tiny_llama_record()
    assert record["command"].startswith("llmcourse train ") and "--arch llama" in record["command"]
    args = cli.build_parser().parse_args(shlex.split(record["command"])[1:])
    gpt_args = cli.build_parser().parse_args(shlex.split(tiny_gpt_record()["command"])[1:])
    same = ("corpus", "tokenizer", "vocab_size", "n_layer", "n_head", "n_embd", "block_size", "steps", "batch_size",
            "lr", "warmup", "eval_every", "seed", "threads")
    assert {k: getattr(args, k) for k in same} == {k: getattr(gpt_args, k) for k in same}, \
        "the Llama is trained on the GPT's data with the GPT's schedule: only the architecture differs"


def test_the_shipped_files_are_the_ones_the_record_hashes():
    paths = checkpoint_paths(ASSETS, LLAMA_NAME)
    meta = load_checkpoint(ASSETS, name=LLAMA_NAME, device="cpu")[2]
    for kind in ("weights", "tokenizer"):
        digest = _sha256(paths[kind])
        assert digest == meta["sha256"][kind] and paths[kind].name == f"{LLAMA_NAME}.{digest[:12]}." + \
            ("safetensors" if kind == "weights" else "tokenizer.json")


def test_a_changed_byte_of_the_shipped_weights_is_refused(tmp_path):
    for path in checkpoint_paths(ASSETS, LLAMA_NAME).values():
        shutil.copy(path, tmp_path / path.name)
    weights = tmp_path / checkpoint_paths(ASSETS, LLAMA_NAME)["weights"].name
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one bit of the last weight
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="does not match the SHA-256"):
        load_checkpoint(tmp_path, name=LLAMA_NAME, device="cpu")


def test_load_tiny_llama(llama, gpt):
    model, tok = llama
    gpt_model, gpt_tok = gpt
    assert type(model) is Llama and not model.training
    c, g = model.config, gpt_model.config
    assert c.n_kv_head < c.n_head and not c.tie_word_embeddings
    assert (c.n_layer, c.n_embd, c.block_size, c.vocab_size) == (g.n_layer, g.n_embd, g.block_size, g.vocab_size)
    assert tok.merges == gpt_tok.merges and tok.special == gpt_tok.special, "the tiny GPT's tokenizer"
    assert abs(model.num_parameters() / gpt_model.num_parameters() - 1) < 0.02, "about the GPT's parameter count"
    other, _ = load_tiny_llama("cpu")
    assert other is not model


def test_its_kv_cache_is_the_gpts_times_n_kv_head_over_n_head(llama, gpt):
    model, gpt_model = llama[0], gpt[0]
    ours, theirs = (KVCache(m.config, 1, m.config.block_size).nbytes for m in (model, gpt_model))
    assert ours * model.config.n_head == theirs * model.config.n_kv_head


def test_it_generates_the_same_tokens_with_and_without_the_cache(llama):
    model, tok = llama
    prompt = torch.tensor(tok.encode("def __init__(self"))
    greedy = [generate(model, prompt, 40, temperature=0, use_cache=c) for c in (True, False)]
    assert torch.equal(*greedy)
    sampled = [generate(model, prompt, 40, temperature=0.8, top_k=50, seed=3, use_cache=c) for c in (True, False)]
    assert torch.equal(*sampled)


def test_torch_calls_counts_the_calls_into_pytorch():
    x = torch.ones(3)
    assert torch_calls(lambda: None) == 0
    assert torch_calls(lambda: torch.ones(3) + 1) == 2  # ones, add
    assert torch_calls(lambda: torch.nn.functional.layer_norm(x, (3,))) == 1, "the calls inside a call not counted"
