"""The Llama of llama.py against Hugging Face transformers' own Llama and Qwen2 (test-only dependency), built from
small random configs offline: same logits, same greedy tokens, cached equal to uncached, batched equal to alone."""

import json

import pytest
import torch

from llmcourse.batching import generate_batch
from llmcourse.generate import generate
from llmcourse.gpt import KVCache
from llmcourse.llama import LlamaConfig, load_llama, random_llama, rotate, rope_tables

transformers = pytest.importorskip("transformers")

HF_SMALL = dict(vocab_size=97, hidden_size=64, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=64, rms_norm_eps=1e-5)


def hf_model(kind: str, **overrides):
    torch.manual_seed(0)
    if kind == "llama":
        config = transformers.LlamaConfig(**HF_SMALL, rope_theta=500.0, **overrides)
        model = transformers.LlamaForCausalLM(config)
    else:
        config = transformers.Qwen2Config(**HF_SMALL, rope_theta=1000.0, **overrides)
        model = transformers.Qwen2ForCausalLM(config)
    with torch.no_grad():  # HF initialises biases to zero: make them count
        for name, param in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                param.normal_(0, 0.1).add_(1.0 if "norm" in name else 0.0)
    return model.eval()


@pytest.fixture(scope="module", params=["llama", "qwen2", "llama-tied"])
def pair(request, tmp_path_factory):
    kind = request.param.split("-")[0]
    hf = hf_model(kind, **({"tie_word_embeddings": True} if request.param.endswith("tied") else {}))
    folder = tmp_path_factory.mktemp(request.param)
    hf.save_pretrained(folder)  # config.json + model.safetensors, offline
    return hf, load_llama(folder)


def test_logits_equal_hugging_face(pair):
    hf, ours = pair
    ids = torch.randint(0, 97, (3, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = hf(ids).logits
    torch.testing.assert_close(ours(ids), expected, rtol=1.3e-6, atol=1e-5)


def test_greedy_tokens_equal_hugging_face_with_and_without_the_cache(pair):
    hf, ours = pair
    prompt = torch.tensor([5, 17, 42, 3])
    expected = hf.generate(prompt[None], max_new_tokens=12, do_sample=False, pad_token_id=0)[0]
    cached = generate(ours, prompt, 12, temperature=0)
    uncached = generate(ours, prompt, 12, temperature=0, use_cache=False)
    assert cached.tolist() == expected.tolist() == uncached.tolist()


def test_batched_generation_equals_each_prompt_alone(pair):
    _, ours = pair
    prompts = [[1, 2, 3, 4, 5, 6], [7], [8, 9, 10]]  # left padding, per-row rotary positions
    batched = generate_batch(ours, prompts, 8, temperature=0)
    for prompt, row in zip(prompts, batched):
        assert row.tolist() == generate(ours, torch.tensor(prompt), 8, temperature=0).tolist()


def test_grouped_query_attention_shrinks_the_cache_by_n_kv_head_over_n_head():
    config = LlamaConfig(vocab_size=50, block_size=32, n_layer=2, n_head=8, n_kv_head=2, n_embd=64, hidden=160)
    full = LlamaConfig(**{**config.__dict__, "n_kv_head": 8})
    assert KVCache(config, 1, 32).nbytes * 4 == KVCache(full, 1, 32).nbytes
    assert KVCache.bytes_needed(config, 1, 32) == KVCache(config, 1, 32).nbytes


def test_rotation_makes_scores_depend_on_the_distance_only():
    config = LlamaConfig(vocab_size=10, block_size=64, n_layer=1, n_head=1, n_kv_head=1, n_embd=16, hidden=32)
    cos, sin = rope_tables(config)
    q, k = torch.randn(2, 16, generator=torch.Generator().manual_seed(0))

    def score(i, j):
        return (rotate(q, cos[i], sin[i]) * rotate(k, cos[j], sin[j])).sum()

    torch.testing.assert_close(score(3, 1), score(40, 38), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(score(3, 1), score(3, 2))


def test_a_config_json_it_cannot_reproduce_is_refused(tmp_path):
    hf = hf_model("llama")
    hf.save_pretrained(tmp_path)
    original = json.loads((tmp_path / "config.json").read_text())
    for change, words in [({"rope_parameters": {"rope_type": "llama3", "factor": 8.0, "rope_theta": 1e4}},
                           "rotary scaling"),
                          ({"rope_scaling": {"type": "linear", "factor": 2.0}}, "rotary scaling"),
                          ({"hidden_act": "gelu"}, "other than SiLU"), ({"model_type": "gemma"}, "'gemma' model")]:
        (tmp_path / "config.json").write_text(json.dumps({**original, **change}))
        with pytest.raises(ValueError, match=words):
            load_llama(tmp_path)
    with pytest.raises(ValueError, match="multiple of n_kv_head"):
        LlamaConfig(n_head=6, n_kv_head=4)
    with pytest.raises(ValueError, match="pass config"):
        load_llama(random_llama(LlamaConfig(vocab_size=10, block_size=8, n_layer=1, n_head=2, n_kv_head=1,
                                            n_embd=16, hidden=32)).state_dict())
