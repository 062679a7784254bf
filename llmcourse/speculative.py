"""Speculative decoding: a cheap draft proposes k tokens, the target model checks them all in one forward pass.

    out, stats = speculative_generate(target, prompt_ids, 64, draft=small_model, k=4)       # a draft model
    out, stats = speculative_generate(target, prompt_ids, 64, draft="lookup", k=4)          # prompt lookup
    stats.acceptance_rate, stats.tokens_per_target_pass

Batch-1 decoding reads every weight of the target once per token (notebook 07): a pass over k + 1 positions costs
about as much as a pass over one, so every accepted draft token is a target pass saved. The check keeps the target's
output exactly:

- greedy (temperature 0): a draft token is accepted while it equals the target's argmax at its position; the first
  mismatch is replaced by the target's own token, and when all k are accepted the pass gives one more token for free.
  The output is token for token what `generate(target, ..., temperature=0)` gives.
- sampling: draft token x, drawn from the draft's distribution q, is accepted with probability min(1, p(x) / q(x))
  (p: the target's); on a rejection the token is drawn from max(0, p - q), renormalised. Every token is then
  distributed exactly as the target's (Leviathan et al., 2023; Chen et al., 2023).

Drafts: another model on the same tokenizer (the course's small GPT drafting for a larger one), or prompt lookup,
which proposes the k tokens that followed the last earlier occurrence of the context's final n-gram: no second
model, and it pays on text that repeats its context (code, quoted passages).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llmcourse.generate import check_max_new_tokens, check_sampling_args, filtered_logits
from llmcourse.gpt import KVCache, LanguageModel
from llmcourse.timing import measure


@dataclass
class SpeculationStats:
    target_passes: int = 0  # forward passes of the target model
    draft_passes: int = 0  # forward passes of the draft model (0 for prompt lookup)
    proposed: int = 0  # draft tokens proposed
    accepted: int = 0  # draft tokens accepted
    new_tokens: int = 0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.proposed if self.proposed else 0.0

    @property
    def tokens_per_target_pass(self) -> float:
        return self.new_tokens / self.target_passes if self.target_passes else 0.0


def verify_greedy(target_logits: torch.Tensor, draft: list[int]) -> tuple[int, int]:
    """(how many draft tokens to accept, the token that follows them) from the target's logits (k + 1, V) at the
    positions before each draft token and after the last one."""
    choices = target_logits.argmax(dim=-1).tolist()  # the target's own token at each position
    accepted = 0
    while accepted < len(draft) and draft[accepted] == choices[accepted]:
        accepted += 1
    return accepted, choices[accepted]


def verify_sampled(target_probs: torch.Tensor, draft_probs: torch.Tensor, draft: list[int],
                   generator: torch.Generator | None = None) -> tuple[int, int]:
    """(accepted count, next token) by rejection sampling: target_probs (k + 1, V), draft_probs (k, V) the
    distributions the draft tokens were drawn from. The next token is drawn from max(0, p - q) renormalised after a
    rejection, from p after k acceptances; either way every token is distributed as the target's."""
    device = target_probs.device
    for i, token in enumerate(draft):
        p, q = target_probs[i, token], draft_probs[i, token]
        if torch.rand((), generator=generator, device=device) * q <= p:  # u <= p / q, without dividing by q = 0
            continue
        residual = (target_probs[i] - draft_probs[i]).clamp(min=0)
        return i, int(torch.multinomial(residual / residual.sum(), 1, generator=generator))
    return len(draft), int(torch.multinomial(target_probs[len(draft)], 1, generator=generator))


def lookup_draft(ids: list[int], k: int, ngram: int = 3) -> list[int]:
    """Prompt lookup: the (up to) k tokens that followed the most recent earlier occurrence of the last `ngram`
    tokens of ids (trying shorter n-grams down to 1 when there is none); [] when nothing matches."""
    for n in range(min(ngram, len(ids) - 1), 0, -1):
        tail = ids[-n:]
        for start in range(len(ids) - n - 1, -1, -1):  # most recent first, never the tail itself
            if ids[start:start + n] == tail:
                return ids[start + n:start + n + k]
    return []


class _Cached:
    """A model with its KV-cache and the number of committed tokens the cache holds (it can be rolled back)."""

    def __init__(self, model: LanguageModel, max_len: int):
        self.model = model
        parameter = next(model.parameters())
        self.cache = KVCache(model.config, 1, max_len, device=parameter.device, dtype=parameter.dtype)

    @torch.no_grad()
    def logits(self, ids: list[int]) -> torch.Tensor:
        """Feed `ids` after the cached tokens; the logits (len(ids), V) of the token after each."""
        x = torch.tensor([ids], device=self.cache.keys[0].device)
        return self.model(x, cache=self.cache)[0].float()

    def keep(self, tokens: int) -> None:
        """Forget every cached position after the first `tokens` (rejected draft tokens)."""
        self.cache.length = tokens


def _probs(logits: torch.Tensor, temperature: float, top_k, top_p) -> torch.Tensor:
    return torch.softmax(filtered_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p), dim=-1)


@torch.no_grad()
def speculative_generate(target: LanguageModel, prompt_ids: torch.Tensor, max_new_tokens: int, *,
                         draft: LanguageModel | str = "lookup", k: int = 4, temperature: float = 0.0,
                         top_k: int | None = None, top_p: float | None = None, seed: int | None = None,
                         ngram: int = 3) -> tuple[torch.Tensor, SpeculationStats]:
    """The prompt (T,) followed by max_new_tokens tokens of `target`, drafted `k` at a time by `draft` (a model on
    the same vocabulary, or "lookup"), and the statistics of the run. With temperature 0 the tokens are exactly
    `generate(target, prompt_ids, max_new_tokens, temperature=0)`; otherwise they are distributed as the target's
    samples with the same temperature/top_k/top_p (but not the same draws as `generate` with that seed).
    """
    check_sampling_args(temperature, top_k, top_p)
    check_max_new_tokens(max_new_tokens)
    if not isinstance(prompt_ids, torch.Tensor) or prompt_ids.dim() != 1 or prompt_ids.numel() == 0:
        raise ValueError("prompt_ids must be a non-empty 1-D tensor of token ids (speculative decoding is batch 1)")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k, the number of draft tokens per pass, must be an int >= 1, got {k!r}")
    lookup = isinstance(draft, str)
    if lookup and draft != "lookup":
        raise ValueError(f"draft must be a model or 'lookup', got {draft!r}")
    if not lookup and draft.config.vocab_size != target.config.vocab_size:
        raise ValueError(f"the draft's vocabulary ({draft.config.vocab_size} tokens) differs from the target's "
                         f"({target.config.vocab_size}): both must share a tokenizer")
    ids = prompt_ids.tolist()
    if min(ids) < 0 or max(ids) >= target.config.vocab_size:
        raise ValueError(f"prompt_ids must lie in 0..{target.config.vocab_size - 1}, got {min(ids)}..{max(ids)}")
    room = len(ids) + max_new_tokens + k
    limits = [target.config.block_size] + ([] if lookup else [draft.config.block_size])
    if room > min(limits):
        raise ValueError(f"the prompt, {max_new_tokens} new tokens and {k} draft tokens need {room} positions; the "
                         f"model's context holds {min(limits)}: generate fewer tokens")
    generator = None
    if seed is not None:
        generator = torch.Generator(device=next(target.parameters()).device).manual_seed(seed)
    stats = SpeculationStats()
    verifier = _Cached(target, room)
    drafter = None if lookup else _Cached(draft, room)
    goal = len(ids) + max_new_tokens
    while len(ids) < goal and max_new_tokens:
        want = min(k, goal - len(ids) - 1)  # the pass itself always adds one token
        proposal, q = [], []
        if want and lookup:
            proposal = lookup_draft(ids, want, ngram)
        elif want:
            logits = drafter.logits(ids[drafter.cache.length:])[-1]  # committed tokens it has not seen yet
            stats.draft_passes += 1
            for step in range(want):
                if temperature == 0:
                    token = int(logits.argmax())
                else:
                    q.append(_probs(logits, temperature, top_k, top_p))
                    token = int(torch.multinomial(q[-1], 1, generator=generator))
                proposal.append(token)
                if step + 1 < want:
                    logits = drafter.logits([token])[-1]
                    stats.draft_passes += 1
        start = verifier.cache.length  # the target holds every committed token but the last
        target_logits = verifier.logits(ids[start:] + proposal)[-(len(proposal) + 1):]  # (len + 1, V)
        stats.target_passes += 1
        if temperature == 0:
            accepted, following = verify_greedy(target_logits, proposal)
        else:
            p = _probs(target_logits, temperature, top_k, top_p)
            if lookup:  # a proposal from lookup is certain: q is one-hot on it
                q = [torch.nn.functional.one_hot(torch.tensor(t, device=p.device), p.shape[-1]).float()
                     for t in proposal]
            accepted, following = verify_sampled(p, torch.stack(q) if q else p[:0], proposal, generator)
        stats.proposed += len(proposal)
        stats.accepted += accepted
        ids += proposal[:accepted] + [following]
        verifier.keep(len(ids) - 1)
        if drafter is not None:
            drafter.keep(min(drafter.cache.length, len(ids) - 1))
    stats.new_tokens = len(ids) - prompt_ids.numel()
    return torch.tensor(ids, device=prompt_ids.device), stats


# -- when it pays: the speedup from the costs of the passes ---------------------------------------------------------

def tokens_per_pass(acceptance: float, k: int) -> float:
    """Tokens a target pass yields on average when each of the k draft tokens is accepted with probability
    `acceptance`, independently, up to the first rejection: (1 - a^(k+1)) / (1 - a), k + 1 when a = 1."""
    if not 0.0 <= acceptance <= 1.0 or k < 1:
        raise ValueError(f"acceptance must lie in [0, 1] and k be at least 1, got {acceptance} and {k}")
    return k + 1.0 if acceptance == 1.0 else (1.0 - acceptance ** (k + 1)) / (1.0 - acceptance)


def predicted_speedup(acceptance: float, k: int, draft_cost: float, verify_cost: float = 1.0) -> float:
    """Speculative decoding's speedup over the target alone, from the costs of the passes in units of one 1-token
    target pass: each round makes k draft passes (`draft_cost` each) and one target pass over k + 1 positions
    (`verify_cost`), and yields `tokens_per_pass(acceptance, k)` tokens. Bookkeeping is left out."""
    return tokens_per_pass(acceptance, k) / (k * draft_cost + verify_cost)


@torch.no_grad()
def pass_seconds(model: LanguageModel, new_tokens: int, *, past: int = 32, repeats: int = 7) -> float:
    """Median seconds of one cached forward pass of `model` over `new_tokens` positions after `past` cached ones, at
    batch 1: what a draft step (1 position) or a verification (k + 1 positions) costs."""
    device = next(model.parameters()).device
    if past + new_tokens > model.config.block_size:
        raise ValueError(f"past + new_tokens = {past + new_tokens} exceeds the model's context "
                         f"{model.config.block_size}")
    cache = KVCache(model.config, 1, past + new_tokens, device=device, dtype=next(model.parameters()).dtype)
    model(torch.zeros(1, past, dtype=torch.int64, device=device), cache=cache)  # the cached context
    ids = torch.zeros(1, new_tokens, dtype=torch.int64, device=device)

    def one_pass() -> None:
        model(ids, cache=cache, last_only=True)
        cache.length = past  # the same positions again next time

    return measure(one_pass, warmup=2, repeats=repeats).median
