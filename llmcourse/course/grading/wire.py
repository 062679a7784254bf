"""The grader's wire format: the data that crosses between the trusted grader and the sandbox running a learner's code.

Only data crosses: None, bools, numbers, strings, bytes, lists, tuples, dicts, sets, NumPy arrays, scalars and
dtypes, PyTorch tensors and dtypes, and two kinds of PyTorch objects the training exercise takes (a model built of
standard `torch.nn` layers, and an SGD/Adam/AdamW optimizer over it), rebuilt from an allowlist of classes. A message
is a JSON header plus raw array bytes: loading one runs no code (no pickle), and every size, shape, dtype and
nesting depth is checked before anything is allocated.

This file is copied into the sandbox next to worker.py: it imports only the standard library, NumPy and (when a
message holds tensors) PyTorch, never llmcourse.
"""

from __future__ import annotations

import inspect
import json
import math
import select
import socket
import struct
import time
from typing import Any, Callable

import numpy as np

MAX_MESSAGE_BYTES = 64 * 2**20  # the graded tests send kilobytes; a learner returning gigabytes is refused
MAX_HEADER_BYTES = 16 * 2**20
MAX_DEPTH = 64
_LENGTH = struct.Struct(">Q")
_HEADER_LENGTH = struct.Struct(">I")
# dtype kinds an array may have: booleans, integers, floats, complex numbers, fixed-width strings (never objects)
_ARRAY_KINDS = set("biufcUS")
_TORCH_DTYPES = ("float64", "float32", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "bool",
                 "complex64", "complex128")
_MODULE_ARGS = {  # torch.nn classes a model may be built of -> the constructor arguments read from an instance
    "Sequential": (), "Identity": (), "ReLU": (), "Tanh": (), "Sigmoid": (),
    "GELU": ("approximate",),
    "Dropout": ("p",),
    "Embedding": ("num_embeddings", "embedding_dim", "padding_idx"),
    "Linear": ("in_features", "out_features"),
    "LayerNorm": ("normalized_shape", "eps", "elementwise_affine"),
}
_OPTIMIZERS = ("SGD", "Adam", "AdamW")


class WireError(ValueError):
    """A value that cannot cross (an unsupported type, too large) or a message that is malformed."""


# -- values <-> (JSON tree, buffers) ---------------------------------------------------------------------------------

class _Encoder:
    def __init__(self, hook: Callable[[Any], dict | None] | None):
        self.buffers: list[bytes] = []
        self.hook = hook
        self.modules: list[Any] = []  # modules of this message, so an optimizer can name its parameters

    def buffer(self, data: bytes) -> int:
        self.buffers.append(data)
        return len(self.buffers) - 1

    def encode(self, value: Any, depth: int = 0) -> Any:
        if depth > MAX_DEPTH:
            raise WireError(f"a value nested more than {MAX_DEPTH} levels deep cannot be sent")
        if value is None or isinstance(value, (bool, str)):
            return value
        if isinstance(value, np.generic):  # before int/float: np.float64 is a float subclass, and must stay NumPy's
            array = np.asarray(value)
            self._check_dtype(array.dtype)
            return {"t": "scalar", "d": array.dtype.str, "b": self.buffer(array.tobytes())}
        if isinstance(value, int):
            return int(value)
        if isinstance(value, float):
            return float(value) if math.isfinite(value) else {"t": "float", "v": repr(float(value))}
        if isinstance(value, bytes):
            return {"t": "bytes", "b": self.buffer(bytes(value))}
        if isinstance(value, list):
            return [self.encode(item, depth + 1) for item in value]
        if isinstance(value, tuple):
            return {"t": "tuple", "v": [self.encode(item, depth + 1) for item in value]}
        if isinstance(value, dict):
            return {"t": "dict",
                    "v": [[self.encode(k, depth + 1), self.encode(v, depth + 1)] for k, v in value.items()]}
        if isinstance(value, (set, frozenset)):
            return {"t": "set", "v": [self.encode(item, depth + 1) for item in value]}
        if isinstance(value, np.ndarray):
            self._check_dtype(value.dtype)
            return {"t": "array", "d": value.dtype.str, "s": list(value.shape),
                    "b": self.buffer(np.ascontiguousarray(value).tobytes())}
        if isinstance(value, np.dtype) or (isinstance(value, type) and issubclass(value, np.generic)):
            return {"t": "dtype", "d": np.dtype(value).str, "type": isinstance(value, type)}
        hooked = self.hook(value) if self.hook is not None else None
        if hooked is not None:
            return hooked
        torch = _torch_if_loaded()
        if torch is not None:
            if isinstance(value, torch.Tensor):
                return self.tensor(value, torch)
            if isinstance(value, torch.dtype):
                return {"t": "torch_dtype", "d": str(value).removeprefix("torch.")}
            if isinstance(value, torch.nn.Module):
                return self.module(value, torch)
            if isinstance(value, torch.optim.Optimizer):
                return self.optimizer(value, torch, depth)
        raise WireError(f"a {type(value).__module__}.{type(value).__qualname__} cannot be sent between the grader "
                        "and your code: use arrays, tensors, numbers, strings, lists, tuples or dicts")

    @staticmethod
    def _check_dtype(dtype: np.dtype) -> None:
        if dtype.kind not in _ARRAY_KINDS or dtype.fields is not None:
            raise WireError(f"NumPy arrays of dtype {dtype} cannot be sent: use numbers, booleans or strings")

    def tensor(self, value, torch) -> dict:
        if value.layout != torch.strided:
            raise WireError(f"a {value.layout} tensor cannot be sent: use a dense tensor")
        name = str(value.dtype).removeprefix("torch.")
        if name not in _TORCH_DTYPES:
            raise WireError(f"tensors of dtype {value.dtype} cannot be sent")
        data = value.detach().to("cpu").contiguous()
        raw = data.view(torch.int16) if name == "bfloat16" else data
        return {"t": "tensor", "d": name, "s": list(value.shape), "g": bool(value.requires_grad),
                "b": self.buffer(raw.numpy().tobytes())}

    def module(self, value, torch) -> dict:
        spec = _module_spec(value)
        params = [[name, self.tensor(p, torch), None if p.grad is None else self.tensor(p.grad, torch)]
                  for name, p in value.named_parameters()]
        buffers = [[name, self.tensor(b, torch)] for name, b in value.named_buffers()]
        return {"t": "module", "spec": spec, "params": params, "buffers": buffers,
                "training": [m.training for m in value.modules()], "id": self._module_index(value)}

    def _module_index(self, module) -> int:
        """The module's number in this message (numbered first by `_collect_modules`, else on first sight)."""
        index = next((i for i, m in enumerate(self.modules) if m is module), None)
        if index is None:
            self.modules.append(module)
            index = len(self.modules) - 1
        return index

    def optimizer(self, value, torch, depth: int) -> dict:
        name = type(value).__name__
        if type(value) is not getattr(torch.optim, name, None) or name not in _OPTIMIZERS:
            raise WireError(f"a {name} optimizer cannot be sent: the grader supports {', '.join(_OPTIMIZERS)}")
        owners = []  # for each parameter of each group: (index of the module of this message, parameter name)
        for group in value.param_groups:
            names = []
            for p in group["params"]:
                owner = next(((i, n) for i, m in enumerate(self.modules) for n, q in m.named_parameters() if q is p),
                             None)
                if owner is None:
                    raise WireError("an optimizer can only be sent together with the model whose parameters it "
                                    "updates, passed before it")
                names.append(list(owner))
            owners.append(names)
        return {"t": "optimizer", "cls": name, "params": owners, "defaults": self.encode(value.defaults, depth + 1),
                "state": self.encode(value.state_dict(), depth + 1)}


def _module_spec(module) -> dict:
    name = type(module).__name__
    torch = _torch_if_loaded()
    if name not in _MODULE_ARGS or type(module) is not getattr(torch.nn, name, None):
        raise WireError(f"a model containing a {type(module).__qualname__} cannot be sent: the grader rebuilds models "
                        f"from {', '.join(sorted(_MODULE_ARGS))}")
    args = {arg: getattr(module, arg) for arg in _MODULE_ARGS[name]}
    if name == "LayerNorm":
        args["normalized_shape"] = list(args["normalized_shape"])
        args["bias"] = module.bias is not None
    if name == "Linear":
        args["bias"] = module.bias is not None
    dtypes = {str(p.dtype).removeprefix("torch.") for p in module.parameters(recurse=False)}
    return {"cls": name, "args": args, "dtype": dtypes.pop() if len(dtypes) == 1 else None,
            "children": [[child_name, _module_spec(child)] for child_name, child in module.named_children()]}


def _torch_if_loaded():
    import sys
    return sys.modules.get("torch")


class ModelState(dict):
    """A model as the trusted side receives it: parameters (values, gradients), buffers and train/eval flags only,
    to be written into a model it already has (`update_in_place`); never a model built from the sender's words."""


class OptimizerState(dict):
    """An optimizer as the trusted side receives it: its state_dict only, for an optimizer it already has."""


class _Decoder:
    def __init__(self, buffers: list[memoryview], hook: Callable[[dict], Any] | None, build: bool):
        self.buffers = buffers
        self.hook = hook
        self.build = build  # rebuild models and optimizers (the sandbox) or keep their state only (the trusted side)
        self.modules: dict[int, Any] = {}

    def buffer(self, index: Any) -> memoryview:
        if not isinstance(index, int) or not 0 <= index < len(self.buffers):
            raise WireError("a message refers to a buffer it does not hold")
        return self.buffers[index]

    def decode(self, node: Any, depth: int = 0) -> Any:
        if depth > MAX_DEPTH:
            raise WireError(f"a message nested more than {MAX_DEPTH} levels deep")
        if node is None or isinstance(node, (bool, int, float, str)):
            return node
        if isinstance(node, list):
            return [self.decode(item, depth + 1) for item in node]
        if not isinstance(node, dict) or not isinstance(node.get("t"), str):
            raise WireError("a malformed message")
        tag = node["t"]
        if tag == "float":
            if node.get("v") not in ("nan", "inf", "-inf"):
                raise WireError("a malformed float")
            return float(node["v"])
        if tag == "tuple":
            return tuple(self.decode(item, depth + 1) for item in self._list(node))
        if tag == "set":
            return {self.decode(item, depth + 1) for item in self._list(node)}
        if tag == "dict":
            pairs = self._list(node)
            if not all(isinstance(pair, list) and len(pair) == 2 for pair in pairs):
                raise WireError("a malformed dict")
            return {self.decode(k, depth + 1): self.decode(v, depth + 1) for k, v in pairs}
        if tag == "bytes":
            return bytes(self.buffer(node.get("b")))
        if tag == "array":
            return self.array(node)
        if tag == "scalar":
            dtype = _dtype(node.get("d"))
            data = self.buffer(node.get("b"))
            if len(data) != dtype.itemsize:
                raise WireError("a malformed NumPy scalar")
            return np.frombuffer(data, dtype=dtype)[0].copy()
        if tag == "dtype":
            dtype = _dtype(node.get("d"))
            return dtype.type if node.get("type") else dtype
        if tag in ("tensor", "torch_dtype", "module", "optimizer"):
            import torch
            if tag == "tensor":
                return self.tensor(node, torch)
            if tag == "torch_dtype":
                return _torch_dtype(node.get("d"), torch)
            if tag == "module":
                return self.module(node, torch, depth)
            return self.optimizer(node, torch, depth)
        if self.hook is not None:
            return self.hook(node)
        raise WireError(f"a message holds an unknown kind of value {tag!r}")

    @staticmethod
    def _list(node: dict) -> list:
        items = node.get("v")
        if not isinstance(items, list):
            raise WireError("a malformed message")
        return items

    def array(self, node: dict) -> np.ndarray:
        dtype = _dtype(node.get("d"))
        shape = _shape(node.get("s"))
        data = self.buffer(node.get("b"))
        if len(data) != math.prod(shape) * dtype.itemsize:
            raise WireError("an array's bytes do not match its shape")
        return np.frombuffer(data, dtype=dtype).reshape(shape).copy()  # a writable array of its own

    def tensor(self, node: dict, torch) -> Any:
        name = node.get("d")
        if name not in _TORCH_DTYPES:
            raise WireError(f"tensors of dtype {name!r} cannot be received")
        numpy_dtype = np.dtype("int16") if name == "bfloat16" else np.dtype(str(torch.empty(0, dtype=_torch_dtype(
            name, torch)).numpy().dtype))
        array = self.array({"d": numpy_dtype.str, "s": node.get("s"), "b": node.get("b")})
        tensor = torch.from_numpy(array)
        if name == "bfloat16":
            tensor = tensor.view(torch.bfloat16)
        if node.get("g") is True:
            tensor.requires_grad_(True)
        return tensor

    def module(self, node: dict, torch, depth: int) -> Any:
        index = node.get("id")
        if not isinstance(index, int) or index in self.modules:
            raise WireError("a malformed model")
        if not self.build:
            self.modules[index] = ModelState(self.module_state(node, torch))
            return self.modules[index]
        module = _build_module(node.get("spec"), torch, 0)
        load_module_state(module, self.module_state(node, torch))
        self.modules[index] = module
        return module

    def module_state(self, node: dict, torch) -> dict:
        params, buffers, training = node.get("params"), node.get("buffers"), node.get("training")
        if not (isinstance(params, list) and isinstance(buffers, list) and isinstance(training, list)):
            raise WireError("a malformed model")
        return {"params": [(name, self.tensor(p, torch), None if g is None else self.tensor(g, torch))
                           for name, p, g in params],
                "buffers": [(name, self.tensor(b, torch)) for name, b in buffers],
                "training": [bool(flag) for flag in training]}

    def optimizer(self, node: dict, torch, depth: int) -> Any:
        name = node.get("cls")
        if name not in _OPTIMIZERS:
            raise WireError(f"a {name!r} optimizer cannot be received")
        if not self.build:
            state = self.decode(node.get("state"), depth + 1)
            if not isinstance(state, dict):
                raise WireError("a malformed optimizer")
            return OptimizerState(state)
        cls = getattr(torch.optim, name)
        groups = node.get("params")
        if not isinstance(groups, list):
            raise WireError("a malformed optimizer")
        params_by_group = []
        for group in groups:
            params = []
            for owner in group:
                module = self.modules.get(owner[0]) if isinstance(owner, list) and len(owner) == 2 else None
                found = dict(module.named_parameters()).get(owner[1]) if module is not None else None
                if found is None:
                    raise WireError("an optimizer names a parameter of no model in the message")
                params.append(found)
            params_by_group.append({"params": params})
        defaults = self.decode(node.get("defaults"), depth + 1)
        if not isinstance(defaults, dict):
            raise WireError("a malformed optimizer")
        accepted = inspect.signature(cls).parameters
        optimizer = cls(params_by_group, **{k: v for k, v in defaults.items() if k in accepted})
        optimizer.load_state_dict(self.decode(node.get("state"), depth + 1))
        return optimizer


def _dtype(text: Any) -> np.dtype:
    try:
        dtype = np.dtype(text) if isinstance(text, str) and len(text) < 16 else None
    except TypeError:
        dtype = None
    if dtype is None or dtype.kind not in _ARRAY_KINDS or dtype.fields is not None:
        raise WireError(f"a message holds an array of a dtype that is not allowed: {text!r}")
    return dtype


def _shape(shape: Any) -> tuple[int, ...]:
    if not (isinstance(shape, list) and len(shape) <= 32 and all(type(n) is int and n >= 0 for n in shape)):
        raise WireError("a malformed array shape")
    return tuple(shape)


def _torch_dtype(name: Any, torch) -> Any:
    if name not in _TORCH_DTYPES:
        raise WireError(f"unknown tensor dtype {name!r}")
    return getattr(torch, name)


def _build_module(spec: Any, torch, depth: int) -> Any:
    if depth > MAX_DEPTH or not isinstance(spec, dict) or spec.get("cls") not in _MODULE_ARGS:
        raise WireError("a model of a kind the grader does not rebuild")
    args, children = spec.get("args"), spec.get("children")
    if not isinstance(args, dict) or not isinstance(children, list):
        raise WireError("a malformed model")
    name = spec["cls"]
    if name == "Sequential":
        module = torch.nn.Sequential()
        for child_name, child in children:
            module.add_module(str(child_name), _build_module(child, torch, depth + 1))
        return module
    expected = set(_MODULE_ARGS[name]) | ({"bias"} if name in ("Linear", "LayerNorm") else set())
    if set(args) != expected:
        raise WireError(f"a malformed {name}")
    module = getattr(torch.nn, name)(**args)
    if spec.get("dtype") is not None:
        module.to(_torch_dtype(spec["dtype"], torch))
    return module


def load_module_state(module, state: dict) -> None:
    """Write parameters (values and gradients), buffers and train/eval flags into `module`, checking the names."""
    import torch
    params = dict(module.named_parameters())
    buffers = dict(module.named_buffers())
    modules = list(module.modules())
    if [n for n, _, _ in state["params"]] != list(params) or [n for n, _ in state["buffers"]] != list(buffers) \
            or len(state["training"]) != len(modules):
        raise WireError("a model's parameters do not match the model")
    with torch.no_grad():
        for name, value, grad in state["params"]:
            target = params[name]
            if target.shape != value.shape or grad is not None and grad.shape != target.shape:
                raise WireError(f"parameter {name} has shape {tuple(value.shape)}, expected {tuple(target.shape)}")
            target.data = value.detach().to(target.dtype)
            target.grad = None if grad is None else grad.detach().to(target.dtype)
        for name, value in state["buffers"]:
            buffers[name].copy_(value)
    for m, flag in zip(modules, state["training"]):
        m.training = flag


def dumps(value: Any, hook: Callable[[Any], dict | None] | None = None) -> bytes:
    """One message: a JSON header (the structure) followed by the raw bytes of its arrays.

    `hook(obj)` may encode objects this module does not know, as a dict with a "t" key of its own.
    """
    encoder = _Encoder(hook)
    torch = _torch_if_loaded()
    if torch is not None:  # modules first, wherever they sit, so an optimizer can name their parameters
        _collect_modules(value, encoder.modules, torch, 0)
    tree = encoder.encode(value)
    offsets, position = [], 0
    for data in encoder.buffers:
        offsets.append([position, len(data)])
        position += len(data)
    header = json.dumps({"v": tree, "b": offsets}, separators=(",", ":"), allow_nan=False).encode()
    total = _HEADER_LENGTH.size + len(header) + position
    if total > MAX_MESSAGE_BYTES:
        raise WireError(f"a message of {total / 2**20:.0f} MB is larger than the {MAX_MESSAGE_BYTES // 2**20} MB "
                        "the grader accepts")
    return b"".join([_HEADER_LENGTH.pack(len(header)), header, *encoder.buffers])


def _collect_modules(value: Any, found: list, torch, depth: int) -> None:
    if depth > 3:
        return
    if isinstance(value, torch.nn.Module):
        if not any(m is value for m in found):
            found.append(value)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _collect_modules(item, found, torch, depth + 1)
    elif isinstance(value, dict):
        for item in value.values():
            _collect_modules(item, found, torch, depth + 1)


def loads(data: bytes, hook: Callable[[dict], Any] | None = None, *, build: bool = True) -> Any:
    """The value of a message made by `dumps`; raises WireError for anything malformed. Runs no code of the sender.

    `build=False` (the trusted side) receives models and optimizers as ModelState / OptimizerState: nothing is
    constructed from what the sender says, only tensors it actually sent are allocated.
    """
    view = memoryview(data)
    if len(view) < _HEADER_LENGTH.size:
        raise WireError("a truncated message")
    (length,) = _HEADER_LENGTH.unpack(view[:_HEADER_LENGTH.size])
    if length > MAX_HEADER_BYTES or _HEADER_LENGTH.size + length > len(view):
        raise WireError("a malformed message header")
    try:
        header = json.loads(bytes(view[_HEADER_LENGTH.size:_HEADER_LENGTH.size + length]),
                            parse_constant=_no_constant)
    except (ValueError, RecursionError) as err:
        raise WireError(f"a malformed message header: {err}") from None
    if not isinstance(header, dict) or not isinstance(header.get("b"), list) or "v" not in header:
        raise WireError("a malformed message header")
    body = view[_HEADER_LENGTH.size + length:]
    buffers = []
    for item in header["b"]:
        if not (isinstance(item, list) and len(item) == 2 and all(type(n) is int and n >= 0 for n in item)
                and item[0] + item[1] <= len(body)):
            raise WireError("a message refers to bytes it does not hold")
        buffers.append(body[item[0]:item[0] + item[1]])
    try:
        return _Decoder(buffers, hook, build).decode(header.get("v"))
    except RecursionError:
        raise WireError("a message nested too deeply") from None
    except TypeError as err:  # e.g. a list as a dict key or set item
        raise WireError(f"a malformed message: {err}") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed in a message header")


# -- in-place changes --------------------------------------------------------------------------------------------

def update_in_place(original: Any, updated: Any) -> None:
    """Make `original` hold what `updated` holds, keeping its identity: how a function's in-place changes to its
    arguments (a cache it appends to, a list it edits, a model it trains) reach the caller's objects."""
    torch = _torch_if_loaded()
    if isinstance(original, np.ndarray):
        if not isinstance(updated, np.ndarray) or updated.shape != original.shape:
            raise WireError("an array argument changed shape")
        np.copyto(original, updated, casting="unsafe")
    elif torch is not None and isinstance(original, torch.Tensor):
        if not isinstance(updated, torch.Tensor) or updated.shape != original.shape:
            raise WireError("a tensor argument changed shape")
        with torch.no_grad():
            original.copy_(updated)
    elif isinstance(original, list) and isinstance(updated, list):
        original[:] = updated
    elif isinstance(original, dict) and isinstance(updated, dict):
        original.clear()
        original.update(updated)
    elif isinstance(original, set) and isinstance(updated, set):
        original.clear()
        original.update(updated)
    elif torch is not None and isinstance(original, torch.nn.Module) and isinstance(updated, torch.nn.Module):
        load_module_state(original, {
            "params": [(n, p, p.grad) for n, p in updated.named_parameters()],
            "buffers": list(updated.named_buffers()), "training": [m.training for m in updated.modules()]})
    elif torch is not None and isinstance(original, torch.nn.Module) and isinstance(updated, ModelState):
        load_module_state(original, updated)
    elif torch is not None and isinstance(original, torch.optim.Optimizer) \
            and isinstance(updated, (torch.optim.Optimizer, OptimizerState)):
        try:
            original.load_state_dict(updated if isinstance(updated, OptimizerState) else updated.state_dict())
        except (ValueError, KeyError, TypeError, RuntimeError) as err:
            raise WireError(f"an optimizer's state does not fit the optimizer: {err}") from None
    else:
        raise WireError(f"an argument of type {type(original).__name__} was changed in place, which the grader "
                        "cannot pass back")


def arguments(args: list, kwargs: dict):
    """(position or keyword, value) of each argument of a call."""
    yield from enumerate(args)
    yield from kwargs.items()


def _is_model_or_optimizer(value: Any) -> bool:
    torch = _torch_if_loaded()
    return torch is not None and isinstance(value, (torch.nn.Module, torch.optim.Optimizer))


def _comparable(value: Any, args: list, kwargs: dict, hook) -> bytes | None:
    if _is_model_or_optimizer(value):  # an optimizer is encoded with the models whose parameters it updates
        value = [v for _, v in arguments(args, kwargs) if _is_model_or_optimizer(v) and v is not value] + [value]
    try:
        return dumps(value, hook)
    except WireError:
        return None


def snapshot(args: list, kwargs: dict, hook: Callable[[Any], dict | None] | None = None) -> dict:
    """The arguments of a call as bytes, to tell afterwards which ones it changed in place."""
    return {key: _comparable(value, args, kwargs, hook) for key, value in arguments(args, kwargs)}


def changed_arguments(before: dict, args: list, kwargs: dict,
                      hook: Callable[[Any], dict | None] | None = None) -> list[list]:
    """[[position or keyword, value], ...] of the arguments the call changed in place; models and optimizers go
    together (an optimizer crosses only with the model it updates)."""
    changed = [key for key, value in arguments(args, kwargs) if _comparable(value, args, kwargs, hook) != before[key]]
    values = dict(arguments(args, kwargs))
    if any(_is_model_or_optimizer(values[key]) for key in changed):
        changed += [key for key, value in values.items() if _is_model_or_optimizer(value) and key not in changed]
    return [[key, values[key]] for key in changed]


# -- framing over a socket ---------------------------------------------------------------------------------------

class ChannelClosed(ConnectionError):
    """The other side closed the channel (its process ended)."""


class ChannelTimeout(TimeoutError):
    """Nothing arrived before the deadline."""


def send(sock: socket.socket, payload: bytes) -> None:
    sock.sendall(_LENGTH.pack(len(payload)) + payload)


def receive(sock: socket.socket, deadline: float | None = None) -> bytes:
    """One message's payload; `deadline` is a time.monotonic() value (None: wait as long as it takes)."""
    (length,) = _LENGTH.unpack(_read_exactly(sock, _LENGTH.size, deadline))
    if length > MAX_MESSAGE_BYTES:
        raise WireError(f"a message of {length} bytes is larger than the grader accepts")
    return _read_exactly(sock, length, deadline)


def _read_exactly(sock: socket.socket, count: int, deadline: float | None) -> bytes:
    chunks, remaining = [], count
    while remaining:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([sock], [], [], left)[0]:
                raise ChannelTimeout("no answer before the deadline")
        chunk = sock.recv(min(remaining, 1 << 20))
        if not chunk:
            raise ChannelClosed("the other side closed the channel")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)
