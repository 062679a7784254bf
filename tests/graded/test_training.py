"""Graded tests of notebook 05: one training step, and perplexity from the mean cross-entropy."""

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from llmcourse.course.grading import assert_allclose, exercise, expect_error

V, D = 11, 6  # vocabulary and width of the tiny language model below


def tiny_lm(seed: int) -> torch.nn.Module:
    """Embedding then Linear: ids (B, T) -> logits (B, T, V), the interface of the course's GPT."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Embedding(V, D), torch.nn.Linear(D, V))


def batch(seed: int, B: int = 3, T: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(V, (B, T), generator=g), torch.randint(V, (B, T), generator=g)


def expected_after_sgd(model: torch.nn.Module, x, y, lr: float, clip: float | None) -> list[torch.Tensor]:
    """Parameters after one SGD step done by hand with autograd (on a copy): p - lr * (clipped) gradient."""
    model = copy.deepcopy(model)
    logits = model(x)
    loss = F.cross_entropy(logits.reshape(-1, V), y.reshape(-1))
    grads = torch.autograd.grad(loss, list(model.parameters()))
    scale = 1.0
    if clip is not None:
        norm = torch.sqrt(sum((g ** 2).sum() for g in grads)).item()
        scale = min(1.0, clip / norm)
    return [(p - lr * scale * g).detach() for p, g in zip(model.parameters(), grads)]


# float32 model: the learner's loss and update may sum in another order than autograd's, so PyTorch's own float32
# tolerances (rtol 1.3e-6, atol 1e-5) apply.
F32 = dict(rtol=1.3e-6, atol=1e-5)


@exercise("training_step")
def test_training_step_returns_the_loss_before_the_update(impl):
    model = tiny_lm(0)
    x, y = batch(1)
    with torch.no_grad():
        expected = F.cross_entropy(model(x).reshape(-1, V), y.reshape(-1)).item()
    got = impl.training.training_step(model, torch.optim.SGD(model.parameters(), lr=0.5), x, y, clip=None)
    assert isinstance(got, float), f"training_step should return the loss as a Python float (loss.item()), got " \
                                   f"{type(got).__name__}"
    assert_allclose(got, expected, **F32, what="the returned loss (mean cross-entropy of model(x) against y)")


@exercise("training_step")
def test_training_step_updates_parameters_like_sgd(impl):
    model = tiny_lm(2)
    x, y = batch(3)
    expected = expected_after_sgd(model, x, y, lr=0.5, clip=None)
    impl.training.training_step(model, torch.optim.SGD(model.parameters(), lr=0.5), x, y, clip=None)
    for (name, p), e in zip(model.named_parameters(), expected):
        assert_allclose(p.detach(), e, **F32, what=f"parameter {name} after one SGD step (lr 0.5, no clipping)")


@exercise("training_step")
def test_training_step_clips_the_global_gradient_norm(impl):
    model = tiny_lm(4)
    x, y = batch(5)
    clip = 0.01  # far below this batch's gradient norm (about 0.8), so clipping changes the step
    expected = expected_after_sgd(model, x, y, lr=1.0, clip=clip)
    impl.training.training_step(model, torch.optim.SGD(model.parameters(), lr=1.0), x, y, clip=clip)
    for (name, p), e in zip(model.named_parameters(), expected):
        assert_allclose(p.detach(), e, **F32,
                        what=f"parameter {name} after a step with clip={clip} (clip the norm of ALL gradients together)")


@exercise("training_step")
def test_training_step_zeroes_gradients_so_steps_do_not_accumulate(impl):
    model = tiny_lm(6)
    (x1, y1), (x2, y2) = batch(7, B=1, T=1), batch(8, B=1, T=1)  # edge case: a single position
    expected_model = copy.deepcopy(model)
    for x, y in ((x1, y1), (x2, y2)):
        expected = expected_after_sgd(expected_model, x, y, lr=0.3, clip=None)
        with torch.no_grad():
            for p, e in zip(expected_model.parameters(), expected):
                p.copy_(e)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.3)
    impl.training.training_step(model, optimizer, x1, y1, clip=None)
    for name, p in model.named_parameters():
        assert p.grad is None or not p.grad.any(), \
            f"the gradient of {name} is not zero after training_step: call optimizer.zero_grad() after the step"
    impl.training.training_step(model, optimizer, x2, y2, clip=None)
    for (name, p), e in zip(model.named_parameters(), expected_model.parameters()):
        assert_allclose(p.detach(), e.detach(), **F32, what=f"parameter {name} after two steps")


@exercise("training_step")
def test_training_step_with_adamw_on_a_deeper_model(impl):
    torch.manual_seed(9)  # an MLP language model: embedding, LayerNorm, two linear layers with GELU between
    model = torch.nn.Sequential(torch.nn.Embedding(V, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 16),
                                torch.nn.GELU(), torch.nn.Linear(16, V))
    reference = copy.deepcopy(model)
    x, y = batch(10, B=2, T=8)
    ref_opt = torch.optim.AdamW(reference.parameters(), lr=1e-2)
    loss = F.cross_entropy(reference(x).reshape(-1, V), y.reshape(-1))
    loss.backward()
    torch.nn.utils.clip_grad_norm_(reference.parameters(), 0.5)
    ref_opt.step()
    got = impl.training.training_step(model, torch.optim.AdamW(model.parameters(), lr=1e-2), x, y, clip=0.5)
    assert_allclose(got, loss.item(), **F32, what="the returned loss")
    for (name, p), (_, e) in zip(model.named_parameters(), reference.named_parameters()):
        assert_allclose(p.detach(), e.detach(), **F32, what=f"parameter {name} after one AdamW step")


@exercise("training_step")
def test_training_step_rejects_mismatched_shapes(impl):
    model = tiny_lm(0)
    x, y = batch(1)
    with expect_error(ValueError, match="shape", what="training_step with x (3, 5) and y (3, 4)"):
        impl.training.training_step(model, torch.optim.SGD(model.parameters(), lr=0.1), x, y[:, :-1])


@exercise("training_step")
def test_training_step_rejects_what_is_not_a_2d_integer_batch_and_a_bad_clip(impl):
    model = tiny_lm(0)
    x, y = batch(1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    bad = {"x of dtype float32": (x.float(), y), "y of dtype float32": (x, y.float()),
           "1-D x and y": (x[0], y[0]), "3-D x and y": (x[None], y[None]), "x a list": (x.tolist(), y),
           "y of dtype int32 (cross-entropy needs int64 targets)": (x, y.int())}
    for what, (xb, yb) in bad.items():
        with expect_error(ValueError, what=f"training_step with {what} (x and y must be 2-D integer tensors)"):
            impl.training.training_step(model, optimizer, xb, yb)
    for clip in (0.0, -1.0):
        with expect_error(ValueError, what=f"training_step with clip={clip} (clip must be positive, or None)"):
            impl.training.training_step(model, optimizer, x, y, clip=clip)


@exercise("perplexity")
def test_perplexity_is_exp_of_torch_cross_entropy(impl):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(20, 7, generator=g, dtype=torch.float64)
    targets = torch.randint(7, (20,), generator=g)
    ce = F.cross_entropy(logits, targets).item()
    got = impl.training.perplexity(ce)
    assert isinstance(got, float), f"perplexity should return a Python float, got {type(got).__name__}"
    # float64 and one exp: only rounding separates the two, so float64's rtol 1e-7 is ample.
    assert_allclose(got, torch.exp(torch.tensor(ce, dtype=torch.float64)).item(), rtol=1e-7,
                    what="perplexity(cross-entropy)")


@exercise("perplexity")
@pytest.mark.parametrize("vocab", [1, 2, 512, 50257])
def test_perplexity_of_a_uniform_guess_is_the_vocabulary_size(impl, vocab):
    # A uniform guess over V tokens has cross-entropy log(V); float64 rounding only, rtol 1e-7.
    assert_allclose(impl.training.perplexity(math.log(vocab)), float(vocab), rtol=1e-7,
                    what=f"perplexity(log({vocab}))")


@exercise("perplexity")
def test_perplexity_accepts_tensors_and_numpy_scalars(impl):
    # float32 inputs: the float32 value of 1.5 is exact, so exp matches within float64's rtol 1e-7.
    for value in (torch.tensor(1.5), np.float32(1.5), 3 / 2):
        got = impl.training.perplexity(value)
        assert isinstance(got, float), f"perplexity({type(value).__name__}) should return a Python float, got " \
                                       f"{type(got).__name__}"
        assert_allclose(got, math.exp(1.5), rtol=1e-7, what=f"perplexity of a {type(value).__name__} 1.5")


@exercise("perplexity")
def test_perplexity_overflow_is_infinite(impl):
    assert impl.training.perplexity(1000.0) == math.inf, \
        "perplexity(1000.0) should be float('inf'): exp(1000) overflows a float"


@exercise("perplexity")
@pytest.mark.parametrize("bad, error", [(-0.1, ValueError), (math.nan, ValueError), ("2.0", TypeError),
                                        ([1.0], TypeError), (True, TypeError),
                                        (torch.tensor([1.0, 2.0]), TypeError), (torch.tensor(-1.0), ValueError)])
def test_perplexity_rejects_bad_input(impl, bad, error):
    with expect_error(error, what=f"perplexity({bad!r})"):
        impl.training.perplexity(bad)
