"""The grader's wire format carries data only: values round-trip exactly, malformed or hostile messages are refused
with WireError before anything is allocated, and nothing in a message can make the receiver run code."""

from __future__ import annotations

import json
import math
import pickle
import struct

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from llmcourse.course.grading import wire


def round_trip(value):
    return wire.loads(wire.dumps(value))


def message(header: dict, body: bytes = b"") -> bytes:
    """A hand-made message: what a hostile sender could put on the channel."""
    raw = json.dumps(header).encode()
    return struct.pack(">I", len(raw)) + raw + body


@pytest.mark.parametrize("value", [
    None, True, False, 0, -7, 2**80, 1.5, -0.0, math.inf, -math.inf, "", "héllo 中文", b"\x00\xff",
    [1, [2, (3, 4)], {"a": 1}], (), {(1, 2): 3, 4: [5]}, {1, 2, 3}, frozenset(), {"nested": {"deep": [None]}},
])
def test_python_values_round_trip_with_their_types(value):
    got = round_trip(value)
    assert got == value and type(got) is type(value) or isinstance(value, frozenset) and got == set(value)


def test_nan_round_trips():
    assert math.isnan(round_trip(math.nan))


def test_numpy_scalars_stay_numpy_scalars():
    # perplexity's test checks "a Python float": np.float64 is a float subclass, so it must not turn into one.
    for value in (np.float64(1.5), np.float32(2.5), np.int64(3), np.bool_(True), np.uint8(255)):
        got = round_trip(value)
        assert type(got) is type(value) and got == value


@given(hnp.arrays(dtype=st.sampled_from([np.float64, np.float32, np.float16, np.int64, np.int8, np.uint8, np.bool_,
                                         np.complex128]),
                  shape=hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5)))
def test_arrays_round_trip_exactly(array):
    got = round_trip(array)
    assert got.dtype == array.dtype and got.shape == array.shape
    assert got.tobytes() == array.tobytes()  # bit for bit, NaNs included
    assert got.flags.writeable  # a learner may write into what they receive


def test_non_contiguous_arrays_and_dtypes_round_trip():
    array = np.arange(24.0).reshape(4, 6)[:, ::2].T
    np.testing.assert_array_equal(round_trip(array), array)
    assert round_trip(np.float32) is np.float32 and round_trip(np.dtype("int8")) == np.dtype("int8")


def test_tensors_keep_dtype_shape_and_requires_grad():
    for dtype in (torch.float32, torch.float64, torch.bfloat16, torch.int64, torch.bool, torch.uint8):
        tensor = (torch.arange(6) % 2 == 0) if dtype == torch.bool else torch.arange(6).to(dtype).reshape(2, 3)
        got = round_trip(tensor)
        assert got.dtype == tensor.dtype and torch.equal(got, tensor)
    leaf = torch.ones(3, requires_grad=True)
    assert round_trip(leaf).requires_grad and round_trip(torch.float16) == torch.float16


def test_a_model_and_its_optimizer_cross_together_with_their_state():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(5, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 5))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.tensor([[1, 2]])).sum().backward()
    optimizer.step()
    model.eval()
    got_model, got_optimizer = round_trip([model, optimizer])
    assert not got_model.training
    for (name, p), (_, q) in zip(model.named_parameters(), got_model.named_parameters()):
        assert torch.equal(p, q) and torch.equal(p.grad, q.grad), name
    assert got_optimizer.state_dict()["param_groups"] == optimizer.state_dict()["param_groups"]
    state, got_state = optimizer.state_dict()["state"], got_optimizer.state_dict()["state"]
    assert all(torch.equal(state[i][k], got_state[i][k]) for i in state for k in state[i])
    assert got_optimizer.param_groups[0]["params"][0] is next(got_model.parameters())


def test_update_in_place_reaches_the_callers_objects():
    array, tensor, items, table = np.zeros(3), torch.zeros(2), [1, 2], {"a": 1}
    wire.update_in_place(array, np.array([1.0, 2.0, 3.0]))
    wire.update_in_place(tensor, torch.tensor([4.0, 5.0]))
    wire.update_in_place(items, [3])
    wire.update_in_place(table, {"b": 2})
    assert array.tolist() == [1, 2, 3] and tensor.tolist() == [4, 5] and items == [3] and table == {"b": 2}
    with pytest.raises(wire.WireError, match="changed shape"):
        wire.update_in_place(array, np.zeros(4))


def test_changed_arguments_names_only_what_changed():
    cache, untouched, items = np.zeros(3), np.ones(2), [1]
    before = wire.snapshot([cache, untouched], {"items": items})
    cache[0] = 5.0
    items.append(2)
    changed = wire.changed_arguments(before, [cache, untouched], {"items": items})
    assert [key for key, _ in changed] == [0, "items"]


@pytest.mark.parametrize("value, what", [
    (object(), "object"), (lambda: 1, "function"), (np.array([object()]), "dtype object"),
    (torch.nn.Conv1d(1, 1, 1), "Conv1d"), (iter([1]), "iterator"),
])
def test_values_that_are_not_data_are_refused(value, what):
    with pytest.raises(wire.WireError):
        wire.dumps(value)


def test_an_optimizer_without_its_model_is_refused():
    model = torch.nn.Linear(2, 2)
    with pytest.raises(wire.WireError, match="together with the model"):
        wire.dumps(torch.optim.SGD(model.parameters(), lr=0.1))


@pytest.mark.parametrize("header, body", [
    ({"v": {"t": "array", "d": "|O", "s": [1], "b": 0}, "b": [[0, 8]]}, b"\0" * 8),  # object dtype: pickles
    ({"v": {"t": "array", "d": "<f8", "s": [2**40, 2**40], "b": 0}, "b": [[0, 8]]}, b"\0" * 8),  # huge shape
    ({"v": {"t": "array", "d": "<f8", "s": [-1], "b": 0}, "b": [[0, 8]]}, b"\0" * 8),  # negative shape
    ({"v": {"t": "array", "d": "<f8", "s": [1], "b": 3}, "b": [[0, 8]]}, b"\0" * 8),  # no such buffer
    ({"v": {"t": "array", "d": "<f8", "s": [1], "b": 0}, "b": [[0, 800]]}, b"\0" * 8),  # bytes not there
    ({"v": {"t": "tensor", "d": "qint8", "s": [1], "b": 0}, "b": [[0, 1]]}, b"\0"),  # dtype not allowed
    ({"v": {"t": "module", "spec": {"cls": "Conv1d", "args": {}, "children": []}, "params": [], "buffers": [],
            "training": [], "id": 0}, "b": []}, b""),  # a class outside the allowlist
    ({"v": {"t": "optimizer", "cls": "LBFGS", "params": [], "defaults": {}, "state": {}}, "b": []}, b""),
    ({"v": {"t": "pickle", "data": "x"}, "b": []}, b""),  # an unknown kind of value
    ({"v": {"t": "dict", "v": [[[1], 2]]}, "b": []}, b""),  # an unhashable key
    ({"v": {"t": "float", "v": "1e999"}, "b": []}, b""),
    ({"b": []}, b""),
    ([1, 2], b""),
])
def test_malformed_messages_are_refused(header, body):
    with pytest.raises(wire.WireError):
        wire.loads(message(header, body))


def test_deep_nesting_and_garbage_are_refused():
    deep = {"v": None, "b": []}
    node = None
    for _ in range(200):
        node = [node]
    deep["v"] = node
    for data in (message(deep), b"", b"\x00\x00", struct.pack(">I", 10**9) + b"{}", b"\xff" * 64,
                 struct.pack(">I", 2) + b"NaN", pickle.dumps([1, 2])):
        with pytest.raises(wire.WireError):
            wire.loads(data)


def test_loading_runs_no_code(tmp_path):
    """A pickle that would create a file when unpickled is, on the wire, only a malformed message."""
    marker = tmp_path / "ran"

    class Exploit:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    with pytest.raises(wire.WireError):
        wire.loads(pickle.dumps(Exploit()))
    with pytest.raises(wire.WireError):
        wire.loads(message({"v": {"t": "bytes", "b": 0}, "b": [[0, 10]]}, pickle.dumps(Exploit())[:5]))
    assert not marker.exists()


def test_the_trusted_side_receives_models_as_state_and_builds_nothing():
    """A ~300-byte message describing a Linear of 2**31 x 2**31 is refused before anything is allocated, and a
    real model arrives as its state, written into the model the receiver already has."""
    spec = {"cls": "Linear", "args": {"in_features": 2**31, "out_features": 2**31, "bias": False}, "dtype": None,
            "children": []}
    huge = message({"v": {"t": "module", "spec": spec, "params": [], "buffers": [], "training": [True], "id": 0},
                    "b": []})
    assert isinstance(wire.loads(huge, build=False), wire.ModelState)  # no parameters: nothing allocated
    with pytest.raises(wire.WireError, match="do not match"):
        wire.update_in_place(torch.nn.Linear(2, 2), wire.loads(huge, build=False))
    model = torch.nn.Linear(3, 2)
    state = wire.loads(wire.dumps(model), build=False)
    target = torch.nn.Linear(3, 2)
    wire.update_in_place(target, state)
    assert torch.equal(target.weight, model.weight) and torch.equal(target.bias, model.bias)

