"""Speculative decoding (llmcourse.speculative): greedy output identical to the target alone whatever the draft,
sampled output distributed as the target's (a chi-square test, with a control that the test can fail)."""

import pytest
import torch

from llmcourse import speculative
from llmcourse.generate import generate
from llmcourse.gpt import GPTConfig, random_gpt
from llmcourse.llama import LlamaConfig, random_llama
from llmcourse.speculative import lookup_draft, speculative_generate, verify_greedy

TARGET = random_gpt(GPTConfig(vocab_size=64, block_size=96, n_layer=2, n_head=2, n_embd=32), seed=1)
DRAFT = random_gpt(GPTConfig(vocab_size=64, block_size=96, n_layer=1, n_head=2, n_embd=16), seed=2)
LLAMA = random_llama(LlamaConfig(vocab_size=64, block_size=96, n_layer=2, n_head=4, n_kv_head=2, n_embd=32,
                                 hidden=96), seed=3)
PROMPTS = [[5], [1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 3], [9, 9, 9, 9], list(range(40, 60))]


@pytest.mark.parametrize("target", [TARGET, LLAMA], ids=["gpt", "llama"])
@pytest.mark.parametrize("draft", ["lookup", DRAFT, "self"], ids=["lookup", "small-gpt", "self"])
@pytest.mark.parametrize("k", [1, 3, 5])
def test_greedy_output_is_the_target_s_own(target, draft, k):
    draft = target if draft == "self" else draft
    for prompt in PROMPTS:
        prompt = torch.tensor(prompt)
        expected = generate(target, prompt, 30, temperature=0)
        out, stats = speculative_generate(target, prompt, 30, draft=draft, k=k)
        assert out.tolist() == expected.tolist(), f"prompt {prompt.tolist()}, k={k}"
        assert stats.new_tokens == 30 and stats.accepted <= stats.proposed
        assert stats.target_passes == 30 - stats.accepted  # every pass adds its accepted tokens and one more
        if draft is target:  # a draft identical to the target is always right: k + 1 tokens per pass
            assert stats.acceptance_rate == 1.0
            assert stats.target_passes == -(-30 // (k + 1))


def test_verify_greedy_accepts_up_to_the_first_mismatch():
    logits = torch.full((4, 10), -1.0)
    for position, token in enumerate([3, 7, 2, 5]):
        logits[position, token] = 1.0  # the target's own choices: 3, 7, 2, then 5
    assert verify_greedy(logits, [3, 7, 2]) == (3, 5)  # all accepted, and a bonus token
    assert verify_greedy(logits, [3, 8, 2]) == (1, 7)  # the mismatch is replaced by the target's token
    assert verify_greedy(logits[:1], []) == (0, 3)


def test_lookup_proposes_what_followed_the_last_match():
    ids = [1, 2, 3, 9, 9, 1, 2, 3]
    assert lookup_draft(ids, 2) == [9, 9]
    assert lookup_draft([4, 5, 6, 7], 3) == []
    assert lookup_draft([1, 2, 7, 1], 3) == [2, 7, 1]  # falls back to a 1-gram


def exact_two_token_distribution(model, prompt, temperature):
    """P(x1, x2 | prompt) of the target, computed from its logits."""
    probs = {}
    first = torch.softmax(model(prompt[None])[0, -1] / temperature, dim=-1)
    for x1 in range(model.config.vocab_size):
        second = torch.softmax(model(torch.cat([prompt, torch.tensor([x1])])[None])[0, -1] / temperature, dim=-1)
        for x2 in range(model.config.vocab_size):
            probs[x1, x2] = float(first[x1] * second[x2])
    return probs


def chi_square_p_value(counts, probs, n):
    """p-value of Pearson's chi-square test of counts against probs (cells of expected count < 5 pooled)."""
    cells = sorted(probs, key=probs.get)
    statistic, pooled_observed, pooled_expected, df = 0.0, 0, 0.0, -1
    for cell in cells:
        pooled_observed += counts.get(cell, 0)
        pooled_expected += n * probs[cell]
        if pooled_expected >= 5:
            statistic += (pooled_observed - pooled_expected) ** 2 / pooled_expected
            pooled_observed, pooled_expected, df = 0, 0.0, df + 1
    statistic += (pooled_observed - pooled_expected) ** 2 / max(pooled_expected, 1e-9)
    return 1 - float(torch.special.gammainc(torch.tensor(df / 2, dtype=torch.float64),
                                            torch.tensor(statistic / 2, dtype=torch.float64)))


def peaked_gpt(n_embd: int, seed: int):
    """A tiny random GPT whose next-token distributions are far from uniform (a scaled-up embedding table), so that
    two of them disagree clearly."""
    model = random_gpt(GPTConfig(vocab_size=6, block_size=16, n_layer=1, n_head=2, n_embd=n_embd), seed=seed)
    with torch.no_grad():
        model.transformer.wte.weight.mul_(40.0)
    return model


SMALL_TARGET, SMALL_DRAFT = peaked_gpt(16, seed=4), peaked_gpt(8, seed=5)


def sampled_counts(draft, n):
    prompt = torch.tensor([1, 2])
    counts = {}
    for seed in range(n):
        out, _ = speculative_generate(SMALL_TARGET, prompt, 2, draft=draft, k=2, temperature=1.0, seed=seed)
        cell = tuple(out[2:].tolist())
        counts[cell] = counts.get(cell, 0) + 1
    return counts


@pytest.mark.parametrize("draft", [SMALL_DRAFT, "lookup"], ids=["small-gpt", "lookup"])
def test_sampled_tokens_are_distributed_as_the_target_s(draft):
    with torch.no_grad():
        probs = exact_two_token_distribution(SMALL_TARGET, torch.tensor([1, 2]), 1.0)
    n = 2000
    p_value = chi_square_p_value(sampled_counts(draft, n), probs, n)
    assert p_value > 1e-3, f"the samples do not follow the target's distribution (chi-square p = {p_value:.2e})"


def test_the_distribution_test_fails_a_sampler_that_skips_the_rejection(monkeypatch):
    """The control: accepting every draft token gives the draft's distribution, which the test must reject."""
    def accept_all(target_probs, draft_probs, draft, generator=None):
        return len(draft), int(torch.multinomial(target_probs[len(draft)], 1, generator=generator))

    monkeypatch.setattr(speculative, "verify_sampled", accept_all)
    with torch.no_grad():
        probs = exact_two_token_distribution(SMALL_TARGET, torch.tensor([1, 2]), 1.0)
    n = 2000
    assert chi_square_p_value(sampled_counts(SMALL_DRAFT, n), probs, n) < 1e-3


def test_bad_arguments_are_named():
    prompt = torch.tensor([1, 2])
    for kwargs, words in [(dict(k=0), "k, the number"), (dict(draft="ngram"), "'lookup'"),
                          (dict(draft=random_gpt(GPTConfig(vocab_size=10, block_size=96, n_layer=1, n_head=1,
                                                           n_embd=8))), "vocabulary")]:
        with pytest.raises(ValueError, match=words):
            speculative_generate(TARGET, prompt, 5, **kwargs)
    with pytest.raises(ValueError, match="context holds 96"):
        speculative_generate(TARGET, prompt, 95, k=4)


def test_the_two_test_models_disagree():
    """What makes the control meaningful: the draft's first-token distribution is far from the target's."""
    prompt = torch.tensor([[1, 2]])
    with torch.no_grad():
        p, q = (torch.softmax(m(prompt)[0, -1], dim=-1) for m in (SMALL_TARGET, SMALL_DRAFT))
    assert 0.5 * (p - q).abs().sum() > 0.2  # total variation distance


def test_tokens_per_pass_and_the_predicted_speedup():
    assert speculative.tokens_per_pass(0.0, 4) == 1.0  # every draft rejected: the target's own token only
    assert speculative.tokens_per_pass(1.0, 4) == 5.0
    assert speculative.tokens_per_pass(0.5, 2) == pytest.approx(1 + 0.5 + 0.25)
    # a free draft and a verification as cheap as one pass: the speedup is the tokens per pass
    assert speculative.predicted_speedup(0.5, 2, 0.0) == pytest.approx(1.75)
    # the model drafting for itself: 4 draft passes + 1 pass for at most 5 tokens, never faster
    assert speculative.predicted_speedup(1.0, 4, 1.0) == pytest.approx(1.0)
    assert speculative.predicted_speedup(0.9, 4, 0.05, 1.2) > 2.5 > speculative.predicted_speedup(0.3, 4, 0.05, 1.2)
    with pytest.raises(ValueError, match="acceptance must lie in"):
        speculative.tokens_per_pass(1.5, 2)


def test_pass_seconds_times_a_cached_pass_over_new_positions():
    model = random_gpt(GPTConfig(vocab_size=32, block_size=24, n_layer=1, n_head=2, n_embd=16), seed=0)
    assert speculative.pass_seconds(model, 1, past=8, repeats=2) > 0
    assert speculative.pass_seconds(model, 5, past=8, repeats=2) > 0
    with pytest.raises(ValueError, match="exceeds the model's context 24"):
        speculative.pass_seconds(model, 5, past=20)
