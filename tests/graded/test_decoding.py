"""Graded tests of notebook 06 (decoding): temperature, top-k, top-p and one beam-search step."""

import math

import numpy as np
import torch

from llmcourse.course.grading import assert_allclose, assert_equal_ids, exercise

NEG_INF = float("-inf")


def _distinct_logits(*shape: int, seed: int, dtype=torch.float32) -> torch.Tensor:
    """Random logits whose entries are distinct within each row (no ties at any boundary)."""
    gen = torch.Generator().manual_seed(seed)
    ranks = torch.rand(*shape, generator=gen).argsort(dim=-1).argsort(dim=-1)  # a random permutation per row
    noise = torch.rand(*shape, generator=gen, dtype=dtype) * 0.4  # < 0.5: keeps the values distinct
    return ranks.to(dtype) * 0.5 + noise


def assert_same_filter(got, expected: torch.Tensor, *, what: str) -> None:
    """Same shape, the same entries removed (-inf), and the kept entries equal exactly (they are copied)."""
    if not isinstance(got, torch.Tensor):
        raise AssertionError(f"{what} returned a {type(got).__name__}, expected a torch.Tensor")
    if got.shape != expected.shape:
        raise AssertionError(f"{what} has shape {tuple(got.shape)}, expected {tuple(expected.shape)}")
    kept, expected_kept = got != NEG_INF, expected != NEG_INF
    assert_equal_ids(kept.long(), expected_kept.long(), what=f"the entries {what} keeps (1) or removes (0)")
    assert_allclose(got[kept], expected[kept], rtol=0.0, atol=0.0, what=f"the kept entries of {what}")


# -- temperature -------------------------------------------------------------------------------------------------

@exercise("temperature")
def test_temperature_divides_the_logits(impl):
    logits = _distinct_logits(3, 7, seed=0)
    got = impl.decoding.apply_temperature(logits, 0.7)
    # float32, one division each: the result is the correctly rounded quotient, PyTorch's float32 default rtol.
    assert_allclose(got, logits / 0.7, rtol=1.3e-6, atol=0.0, what="apply_temperature(logits, 0.7)")
    assert isinstance(got, torch.Tensor) and got.dtype == torch.float32, \
        f"apply_temperature should return a float32 tensor for float32 logits, got {type(got).__name__} " \
        f"{getattr(got, 'dtype', '')}"


@exercise("temperature")
def test_temperature_sharpens_and_flattens_softmax(impl):
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]], dtype=torch.float64)
    for t in (0.5, 1.0, 2.0):
        got = torch.softmax(impl.decoding.apply_temperature(logits, t), dim=-1)
        expected = np.exp(np.array([2.0, 1.0, 0.0, -1.0]) / t)
        expected /= expected.sum()
        # float64 throughout, a few exp/sum operations: COURSE.md's float64 tolerance.
        assert_allclose(got[0], expected, rtol=1e-7, what=f"softmax(apply_temperature(logits, {t}))")


@exercise("temperature")
def test_temperature_keeps_shape_dtype_and_minus_inf(impl):
    logits = _distinct_logits(2, 3, 5, seed=1, dtype=torch.float64)
    logits[0, 1, 2] = NEG_INF
    got = impl.decoding.apply_temperature(logits, 3.0)
    assert tuple(got.shape) == (2, 3, 5), f"apply_temperature changed the shape (2, 3, 5) to {tuple(got.shape)}"
    assert got.dtype == torch.float64, f"apply_temperature should keep float64, got {got.dtype}"
    assert got[0, 1, 2] == NEG_INF, "a -inf logit (a removed token) must stay -inf after temperature scaling"
    # float64, one division: COURSE.md's float64 tolerance.
    finite = torch.isfinite(logits)
    assert_allclose(got[finite], logits[finite] / 3.0, rtol=1e-7,
                    what="apply_temperature on a (2, 3, 5) float64 tensor")


@exercise("temperature")
def test_temperature_one_changes_nothing_and_leaves_the_input_alone(impl):
    logits = _distinct_logits(4, 6, seed=2)
    before = logits.clone()
    got = impl.decoding.apply_temperature(logits, 1.0)
    assert_allclose(got, before, rtol=0.0, atol=0.0, what="apply_temperature(logits, 1.0)")  # exact: x / 1 == x
    assert torch.equal(logits, before), "apply_temperature modified its input in place; return a new tensor"


# -- top-k -------------------------------------------------------------------------------------------------------

def _topk_expected(logits: torch.Tensor, k: int) -> torch.Tensor:
    """PyTorch's own top-k, scattered back into a tensor of -inf (valid when a row has no ties)."""
    top = torch.topk(logits, k, dim=-1)
    return torch.full_like(logits, NEG_INF).scatter(-1, top.indices, top.values)


@exercise("top_k")
def test_top_k_matches_torch_topk(impl):
    logits = _distinct_logits(3, 4, 10, seed=3)
    got = impl.decoding.top_k_filter(logits, 3)
    # kept entries are copied, not computed: they must be exactly equal.
    assert_same_filter(got, _topk_expected(logits, 3), what="top_k_filter(logits, 3)")


@exercise("top_k")
def test_top_k_one_keeps_only_the_argmax(impl):
    logits = _distinct_logits(5, 8, seed=4)
    got = impl.decoding.top_k_filter(logits, 1)
    finite = torch.isfinite(got)
    assert_equal_ids(finite.sum(dim=-1), np.ones(5, dtype=np.int64), what="number of entries top_k_filter(k=1) keeps")
    assert_equal_ids(got.argmax(dim=-1), logits.argmax(dim=-1), what="the entry top_k_filter(k=1) keeps")


@exercise("top_k")
def test_top_k_at_least_vocabulary_keeps_everything(impl):
    logits = _distinct_logits(2, 6, seed=5, dtype=torch.float64)
    for k in (6, 50):
        got = impl.decoding.top_k_filter(logits, k)
        # nothing is removed, kept entries are copied: exact.
        assert_same_filter(got, logits, what=f"top_k_filter(logits, {k}) with V = 6")
    logits = _distinct_logits(2, 3, 5, seed=9)  # 3-D: the vocabulary is the last axis (5), not axis 1 (3)
    for k in (4, 7):
        got = impl.decoding.top_k_filter(logits, k)
        # kept entries are copied: exact.
        assert_same_filter(got, _topk_expected(logits, min(k, 5)), what=f"top_k_filter of (2, 3, 5) logits, k={k}")


@exercise("top_k")
def test_top_k_keeps_ties_at_the_boundary(impl):
    logits = torch.tensor([[1.0, 3.0, 2.0, 3.0, 0.0], [5.0, 4.0, 4.0, 4.0, 1.0]])
    before = logits.clone()
    got = impl.decoding.top_k_filter(logits, 2)
    expected = torch.tensor([[NEG_INF, 3.0, NEG_INF, 3.0, NEG_INF], [5.0, 4.0, 4.0, 4.0, NEG_INF]])
    # row 1 ties at the 2nd largest value (4.0): all three 4s stay. Copied values: exact.
    assert_same_filter(got, expected, what="top_k_filter(k=2) with ties (keep every tied entry)")
    assert torch.equal(logits, before), "top_k_filter modified its input in place; return a new tensor"


# -- top-p -------------------------------------------------------------------------------------------------------

def _top_p_expected(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Row by row in float64 NumPy: the shortest prefix of the sorted probabilities whose mass reaches p."""
    x = logits.double().numpy().reshape(-1, logits.shape[-1])
    out = np.full_like(x, -np.inf)
    for row, values in enumerate(x):
        probs = np.exp(values - values.max())
        probs /= probs.sum()
        order = np.argsort(-values, kind="stable")
        mass = 0.0
        for index in order:
            out[row, index] = values[index]
            mass += probs[index]
            if mass >= p:
                break
    return torch.from_numpy(out.reshape(logits.shape)).to(logits.dtype)


@exercise("top_p")
def test_top_p_on_a_hand_made_distribution(impl):
    probs = torch.tensor([0.125, 0.5, 0.125, 0.25], dtype=torch.float64)  # sorted: 0.5, 0.25, 0.125, 0.125
    logits = torch.log(probs)[None]
    # p = 0.76: the third token is kept, and the fourth too because it ties with it (0.125 each).
    # p = 0.5 and 0.75 exactly: the mass before the 2nd (3rd) token is exactly p (float64 softmax of these logits
    # gives 0.5 and 0.25 exactly), which is not < p: that token is not kept, the mass has reached p without it.
    for p, keep in ((0.3, [1]), (0.49, [1]), (0.5, [1]), (0.6, [1, 3]), (0.74, [1, 3]), (0.75, [1, 3]),
                    (0.76, [0, 1, 2, 3]), (1.0, [0, 1, 2, 3])):
        got = impl.decoding.top_p_filter(logits, p)
        kept = torch.isfinite(got[0]).nonzero()[:, 0]
        assert_equal_ids(kept, np.array(keep), what=f"the tokens top_p_filter(p={p}) keeps for probs {probs.tolist()}")


@exercise("top_p")
def test_top_p_matches_a_brute_force_nucleus(impl):
    logits = _distinct_logits(3, 4, 12, seed=6) * 2.0
    for p in (0.1, 0.5, 0.9, 0.99):
        got = impl.decoding.top_p_filter(logits, p)
        # kept entries are copied, not computed: exact.
        assert_same_filter(got, _top_p_expected(logits, p), what=f"top_p_filter(logits, {p})")


@exercise("top_p")
def test_top_p_ignores_removed_tokens_and_keeps_the_shape(impl):
    logits = torch.tensor([[0.0, NEG_INF, math.log(3.0), NEG_INF, math.log(2.0)]], dtype=torch.float64)
    before = logits.clone()
    got = impl.decoding.top_p_filter(logits, 0.55)  # probs 1/6, 0, 1/2, 0, 1/3: 0.5 < 0.55, 0.5 + 1/3 >= 0.55
    expected = torch.tensor([[NEG_INF, NEG_INF, math.log(3.0), NEG_INF, math.log(2.0)]], dtype=torch.float64)
    assert_same_filter(got, expected, what="top_p_filter(p=0.55) on logits with -inf entries")
    assert got.dtype == torch.float64, f"top_p_filter should keep the dtype float64, got {got.dtype}"
    assert torch.equal(logits, before), "top_p_filter modified its input in place; return a new tensor"


@exercise("top_p")
def test_top_p_one_keeps_even_the_least_likely_tokens(impl):
    # probabilities 1, 2e-22, 4e-44: the mass before the last tokens rounds to exactly 1.0, yet p = 1 keeps all
    logits = torch.tensor([[0.0, -50.0, -100.0], [-100.0, 0.0, -50.0]], dtype=torch.float64)
    got = impl.decoding.top_p_filter(logits, 1.0)
    assert_same_filter(got, logits, what="top_p_filter(logits, 1.0) (p = 1 keeps every token, however unlikely)")


@exercise("top_p")
def test_top_p_tiny_p_keeps_the_most_likely_token(impl):
    logits = _distinct_logits(6, 9, seed=7)
    got = impl.decoding.top_p_filter(logits, 1e-6)
    assert_equal_ids(torch.isfinite(got).sum(dim=-1), np.ones(6, dtype=np.int64),
                     what="number of tokens top_p_filter(p=1e-6) keeps per row (always the most likely one)")
    assert_equal_ids(got.argmax(dim=-1), logits.argmax(dim=-1), what="the token top_p_filter(p=1e-6) keeps")


# -- beam step ---------------------------------------------------------------------------------------------------

def _beam_expected(scores: torch.Tensor, log_probs: torch.Tensor, width: int):
    """Every candidate listed in plain Python, ranked by (score desc, beam, token)."""
    W, V = log_probs.shape
    candidates = [(float(scores[b] + log_probs[b, t]), b, t) for b in range(W) for t in range(V)]
    best = sorted(candidates, key=lambda c: (-c[0], c[1], c[2]))[:width]
    return (np.array([c[1] for c in best]), np.array([c[2] for c in best]), np.array([c[0] for c in best]))


@exercise("beam_step")
def test_beam_step_by_hand(impl):
    scores = torch.tensor([-1.0, -2.0])
    log_probs = torch.log(torch.tensor([[0.1, 0.6, 0.3], [0.8, 0.1, 0.1]]))
    beam, token, new = impl.decoding.beam_step(scores, log_probs, 3)
    # totals: beam 0: -1 + log(.1, .6, .3) = -3.30, -1.51, -2.20; beam 1: -2 + log(.8, .1, .1) = -2.22, -4.30, -4.30
    assert_equal_ids(beam, np.array([0, 0, 1]), what="beam_step's beam indices")
    assert_equal_ids(token, np.array([1, 2, 0]), what="beam_step's tokens")
    expected = np.array([-1 + math.log(0.6), -1 + math.log(0.3), -2 + math.log(0.8)])
    # float32 inputs, one addition after a log: PyTorch's float32 tolerances.
    assert_allclose(new, expected, rtol=1.3e-6, atol=1e-5, what="beam_step's new scores")


@exercise("beam_step")
def test_beam_step_matches_ranking_every_candidate(impl):
    gen = torch.Generator().manual_seed(8)
    scores = -torch.rand(4, generator=gen, dtype=torch.float64) * 3
    log_probs = torch.log_softmax(torch.randn(4, 11, generator=gen, dtype=torch.float64), dim=-1)
    beam, token, new = impl.decoding.beam_step(scores, log_probs, 5)
    exp_beam, exp_token, exp_scores = _beam_expected(scores, log_probs, 5)
    assert_equal_ids(beam, exp_beam, what="beam_step's beam indices (W=4, V=11, beam_width=5)")
    assert_equal_ids(token, exp_token, what="beam_step's tokens (W=4, V=11, beam_width=5)")
    # float64, one addition: COURSE.md's float64 tolerance.
    assert_allclose(new, exp_scores, rtol=1e-7, what="beam_step's new scores")
    assert beam.dtype == torch.int64 and token.dtype == torch.int64, \
        f"beam_step should return int64 beam indices and tokens, got {beam.dtype} and {token.dtype}"


@exercise("beam_step")
def test_beam_step_first_step_from_one_beam(impl):
    log_probs = torch.log(torch.tensor([[0.05, 0.4, 0.15, 0.3, 0.1]], dtype=torch.float64))
    beam, token, new = impl.decoding.beam_step(torch.zeros(1, dtype=torch.float64), log_probs, 3)
    assert_equal_ids(beam, np.zeros(3, dtype=np.int64), what="beam_step's beam indices from a single beam")
    assert_equal_ids(token, np.array([1, 3, 2]), what="beam_step's tokens from a single beam (the 3 most likely)")
    # float64 logs copied through one addition of 0: COURSE.md's float64 tolerance.
    assert_allclose(new, np.log([0.4, 0.3, 0.15]), rtol=1e-7, what="beam_step's scores from a single beam")


@exercise("beam_step")
def test_beam_step_breaks_ties_by_beam_then_token(impl):
    scores = torch.tensor([0.0, 0.0, -1.0])
    log_probs = torch.tensor([[-1.0, -2.0, -1.0], [-1.0, NEG_INF, -2.0], [0.0, NEG_INF, NEG_INF]])
    beam, token, new = impl.decoding.beam_step(scores, log_probs, 5)
    # totals: all of (0,0), (0,2), (1,0), (2,0) are -1; then (0,1) and (1,2) at -2: flat order decides.
    assert_equal_ids(beam, np.array([0, 0, 1, 2, 0]), what="beam_step's beams when scores tie (smaller beam first)")
    assert_equal_ids(token, np.array([0, 2, 0, 0, 1]), what="beam_step's tokens when scores tie (smaller id first)")
    # small exact binary values, one addition: exact.
    assert_allclose(new, np.array([-1.0, -1.0, -1.0, -1.0, -2.0]), rtol=0.0, atol=0.0,
                    what="beam_step's scores with ties")
