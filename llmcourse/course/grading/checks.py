"""Comparisons for graded tests whose failure message tells a learner what is wrong, in one line."""

from __future__ import annotations

import contextlib
import re
from typing import Iterator

import numpy as np

SHOWN_IN_FULL = 8  # arrays with at most this many entries are shown whole in a failure message


def _index(row: np.ndarray) -> tuple[int, ...]:
    """An index as plain ints, so a message reads (0, 3) rather than (np.int64(0), np.int64(3))."""
    return tuple(int(i) for i in row)


def _as_array(value, what: str) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor
        value = value.detach().cpu().numpy()
    if value is None:
        raise AssertionError(f"{what} returned None: did you forget a `return`?")
    try:
        return np.asarray(value)
    except Exception as err:  # e.g. a ragged list
        raise AssertionError(f"{what} returned a {type(value).__name__} that is not an array: {err}") from None


def assert_allclose(actual, expected, *, rtol: float, atol: float = 0.0, what: str = "the result") -> None:
    """Assert `actual` has `expected`'s shape and matches it within |a - e| <= atol + rtol * |e|.

    The tolerances are not defaulted on purpose: each test chooses them and says why in a comment.
    """
    a = _as_array(actual, what)
    e = _as_array(expected, "the reference")
    if a.shape != e.shape:
        raise AssertionError(f"{what} has shape {a.shape}, expected {e.shape}")
    if not np.issubdtype(a.dtype, np.number) and a.dtype != bool:
        raise AssertionError(f"{what} has dtype {a.dtype}, expected numbers")
    a64, e64 = a.astype(np.float64), e.astype(np.float64)
    if not np.all(np.isfinite(a64) | ~np.isfinite(e64)):
        bad = _index(np.argwhere(~np.isfinite(a64) & np.isfinite(e64))[0])
        raise AssertionError(f"{what} has a non-finite value {a64[bad]} at index {bad}")
    with np.errstate(invalid="ignore"):  # inf - inf where both hold -inf (masked entries) is fine: equal below
        err = np.abs(a64 - e64)
        allowed = atol + rtol * np.abs(e64)
        bad = ~(err <= allowed) & ~(a64 == e64)  # a64 == e64 keeps matching infinities
        # where the expected value is not finite (a masked -inf), only that same value will do: the tolerance,
        # infinite there, would accept anything
        bad |= ~np.isfinite(e64) & (a64 != e64)
    if bad.any():
        worst = np.where(bad, np.where(np.isfinite(err), err, np.inf), -1.0)  # the largest difference, inf first
        idx = _index(np.unravel_index(np.argmax(worst), worst.shape))
        whole = f"; got {_small(a64)}, expected {_small(e64)}" if a.size <= SHOWN_IN_FULL else ""
        raise AssertionError(
            f"{what} differs from the expected values at {bad.sum()} of {bad.size} entries; worst at index {idx}: "
            f"got {a64[idx]:.6g}, expected {e64[idx]:.6g} (tolerance rtol={rtol:g}, atol={atol:g}){whole}"
        )


def _small(values: np.ndarray) -> str:
    """A small array in full, on one line."""
    return np.array2string(values, precision=6, separator=", ", max_line_width=10**6).replace("\n", "")


def assert_equal_ids(actual, expected, *, what: str = "the result") -> None:
    """Assert two sequences of integer ids (token ids, codes) are identical, reporting the first difference."""
    a = _as_array(actual, what)
    e = _as_array(expected, "the reference")
    if a.shape != e.shape:
        raise AssertionError(f"{what} has shape {a.shape}, expected {e.shape}")
    if not (np.issubdtype(a.dtype, np.integer) or a.size == 0):
        raise AssertionError(f"{what} has dtype {a.dtype}, expected integers")
    diff = np.argwhere(a != e)
    if diff.size:
        idx = _index(diff[0])
        whole = f"; got {a.tolist()}, expected {e.tolist()}" if a.size <= 2 * SHOWN_IN_FULL else ""
        raise AssertionError(f"{what} differs at {len(diff)} positions; first at index {idx}: got {a[idx]}, "
                             f"expected {e[idx]}{whole}")


@contextlib.contextmanager
def expect_error(error: type[BaseException], *, what: str, match: str | None = None) -> Iterator[None]:
    """Assert the block raises `error` (with a message matching the regular expression `match`), saying in the
    learner's terms which call on which input should have: `what` names them, e.g. "pack_int4 of 5 codes"."""
    try:
        yield
    except error as err:
        if match is not None and not re.search(match, str(err)):
            raise AssertionError(f"{what} raised {type(err).__name__}({str(err)[:200]!r}), but its message should "
                                 f"say {match!r}") from None
    else:
        raise AssertionError(f"{what} should raise {error.__name__}" + (f" saying {match!r}" if match else "") +
                             ", but it returned normally")
