"""The sandbox side of the grader: imports a learner's modules and runs their functions on request.

Started by llmcourse.course.grading.sandbox, inside bubblewrap when the machine has it, as

    python -I worker.py FD STUBS [--drop-to UID] [--nproc N] [--memory-mb N] [--cpu-seconds N]

It talks over the socket FD in messages of wire.py (data only), and holds nothing a verdict depends on: the graded
tests, the reference solutions and the results run and live in the trusted process. When the learner's code calls a
function of an earlier exercise that the test has asked to be answered by the reference (so each exercise is graded
on its own code), the call goes back over the socket and the trusted side answers it with data.

This file is copied into the sandbox next to wire.py: it imports only the standard library, NumPy and PyTorch.
"""

from __future__ import annotations

import argparse
import builtins
import importlib
import importlib.machinery
import importlib.util
import inspect
import os
import resource
import signal
import socket
import sys
import traceback
import types

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # wire.py; -I leaves the script's folder out
import wire  # noqa: E402

PACKAGE = "submission"
MESSAGE_LIMIT = 2000  # characters of an exception message sent back
FILE_LIMIT = 64 * 2**20  # bytes any file (and so the captured output) may grow to


def _limit(which: int, value: int) -> None:
    """Set a resource limit; where the system has no such limit (macOS's address space), do without it."""
    try:
        resource.setrlimit(which, (value, value))
    except (ValueError, OSError):
        if sys.platform.startswith("linux"):
            raise


def _drop_privileges(uid: int) -> None:
    """From root to an unprivileged user of its own, so the process limit applies to it and it owns nothing."""
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)


def error_record(err: BaseException, *, import_error: bool = False) -> dict:
    """What crosses back for an exception: its type's name, the nearest built-in exception it derives from, a
    length-capped message, and the line of the learner's code that raised it."""
    base = next((cls.__name__ for cls in type(err).__mro__
                 if getattr(builtins, cls.__name__, None) is cls and issubclass(cls, Exception)), "Exception")
    where = ""
    folder = os.getcwd() + os.sep
    for frame in traceback.extract_tb(err.__traceback__):
        if frame.filename.startswith(folder):
            where = f"{os.path.basename(frame.filename)}, line {frame.lineno}"
    try:
        message = str(err)
    except BaseException:  # a learner's exception whose __str__ raises
        message = ""
    return {"type": type(err).__name__[:100], "base": base, "message": message[:MESSAGE_LIMIT], "where": where,
            "import_error": import_error}


def rebuild_error(record: dict) -> BaseException:
    """An exception the learner's code can catch, from the trusted side's record of one."""
    cls = getattr(builtins, str(record.get("base")), None)
    if not (isinstance(cls, type) and issubclass(cls, Exception)):
        cls = RuntimeError
    return cls(str(record.get("message", ""))[:MESSAGE_LIMIT])


class _Loader(importlib.machinery.SourceFileLoader):
    """Loads a module of the submission (or a stand-in), telling the grader when its code starts and ends, so that
    a hang or a crash while importing is blamed on the module whose own code was running."""

    def __init__(self, fullname: str, path: str, worker: "Worker", exercises: list[str] | None):
        super().__init__(fullname, path)
        self.worker, self.exercises = worker, exercises

    def exec_module(self, module: types.ModuleType) -> None:
        name = module.__name__[len(PACKAGE) + 1:]
        self.worker.send({"op": "progress", "module": name, "done": False})
        try:
            super().exec_module(module)
        except BaseException:
            self.worker.failed.append(name)
            raise
        for function in self.exercises or ():  # a stand-in: its exercises are answered by the grader
            setattr(module, function, self.worker.trusted_function(name, function))
        self.worker.send({"op": "progress", "module": name, "done": True})


class _Finder:
    """The submission's modules: the learner's file, or for a module that does not import and that another one
    imports from, a stand-in (the course's stub, with its exercises answered by the grader), so that one broken file
    costs only its own exercises."""

    def __init__(self, worker: "Worker"):
        self.worker = worker

    def find_spec(self, fullname: str, path=None, target=None):
        if not fullname.startswith(PACKAGE + ".") or fullname.count(".") != 1:
            return None
        name = fullname[len(PACKAGE) + 1:]
        if name in self.worker.stand_ins:
            source, exercises = os.path.join(self.worker.stubs, f"{name}.py"), self.worker.stand_ins[name]
        else:
            source, exercises = os.path.join(self.worker.folder, f"{name}.py"), None
        if not os.path.isfile(source):
            return None
        return importlib.util.spec_from_file_location(fullname, source,
                                                      loader=_Loader(fullname, source, self.worker, exercises))


class Worker:
    def __init__(self, sock: socket.socket, stubs: str):
        self.sock = sock
        self.folder = os.getcwd()
        self.stubs = stubs
        self.stand_ins: dict[str, list[str]] = {}  # module -> its exercise functions, for stand-ins
        self.failed: list[str] = []  # modules whose own code raised during the current import, innermost first
        package = types.ModuleType(PACKAGE)
        package.__path__ = []  # found by _Finder only
        sys.modules[PACKAGE] = package
        sys.meta_path.insert(0, _Finder(self))

    # -- messages --------------------------------------------------------------------------------------------------
    def send(self, message: dict) -> None:
        try:
            payload = wire.dumps(message, hook=self.encode_function)
        except BaseException as err:  # a result the grader cannot read: say so instead of the value
            text = str(err) if isinstance(err, wire.WireError) else f"your result could not be sent: {err!r}"
            payload = wire.dumps({"op": "raise", "error": {"type": "TypeError", "base": "TypeError",
                                                           "message": text[:MESSAGE_LIMIT], "where": "",
                                                           "import_error": False}})
        wire.send(self.sock, payload)

    def receive(self) -> dict:
        message = wire.loads(wire.receive(self.sock), hook=self.decode_function)
        if not isinstance(message, dict):
            raise wire.WireError("a malformed request")
        return message

    def encode_function(self, value) -> dict | None:
        answered = getattr(value, "answered_by_the_grader", None)
        if isinstance(answered, tuple):
            return {"t": "function", "m": answered[0], "f": answered[1], "answered": True}
        if inspect.isfunction(value) and value.__module__.startswith(PACKAGE + "."):
            return {"t": "function", "m": value.__module__[len(PACKAGE) + 1:], "f": value.__name__}
        return None

    def decode_function(self, node: dict):
        """A function passed as an argument: one of the learner's, or one the grader answers (the reference's)."""
        if node.get("t") != "function":
            raise wire.WireError(f"unknown value {node.get('t')!r}")
        if node.get("answered") is True:
            return self.trusted_function(str(node.get("m")), str(node.get("f")))
        return self.function(str(node.get("m")), str(node.get("f")))

    # -- the learner's code ----------------------------------------------------------------------------------------
    def module(self, name: str) -> types.ModuleType:
        if not name.isidentifier():
            raise ImportError(f"{name!r} is not a module name")
        return importlib.import_module(f"{PACKAGE}.{name}")

    def function(self, module: str, name: str):
        value = getattr(self.module(module), name, None)
        if not callable(value):
            raise LookupError(f"{module}.py has no function {name!r}: keep the name and signature of the stub")
        return value

    def serve(self) -> None:
        self.send({"op": "ready"})
        while True:
            request = self.receive()
            try:
                if request.get("op") == "import":
                    reply = self.import_module(str(request.get("module")), request.get("stand_ins", {}))
                elif request.get("op") == "call":
                    reply = self.call(request)
                else:
                    raise wire.WireError(f"unknown request {request.get('op')!r}")
            except (wire.ChannelClosed, ConnectionError):
                raise
            except BaseException as err:  # never die on one request: say what went wrong instead
                reply = {"op": "raise", "error": error_record(err)}
            self.send(reply)

    def import_module(self, name: str, stand_ins: dict) -> dict:
        """Import the learner's `name`; modules in `stand_ins` (which do not import) are replaced by stand-ins."""
        if not isinstance(stand_ins, dict) or name in stand_ins:
            raise wire.WireError("a malformed import request")
        self.stand_ins.update({str(k): [str(f) for f in v] for k, v in stand_ins.items() if isinstance(v, list)})
        self.failed = []
        try:
            self.module(name)
        except BaseException as err:  # a learner's module may raise anything at import, SystemExit included
            for qualified in [q for q in sys.modules if q.startswith(PACKAGE + ".")]:
                if qualified[len(PACKAGE) + 1:] not in self.stand_ins:
                    sys.modules.pop(qualified, None)  # half-imported modules would hide the error next time
            culprit = self.failed[0] if self.failed else name
            where = f" (line {err.lineno})" if isinstance(err, SyntaxError) and err.lineno else ""
            record = error_record(err, import_error=True)
            record["message"] = f"{culprit}.py does not import{where}: {type(err).__name__}: {record['message']}"
            return {"op": "raise", "error": record, "culprit": culprit}
        return {"op": "imported"}

    def call(self, request: dict) -> dict:
        args, kwargs = request.get("args"), request.get("kwargs")
        if not isinstance(args, list) or not isinstance(kwargs, dict):
            raise wire.WireError("a malformed call")
        try:
            function = self.function(str(request.get("module")), str(request.get("function")))
        except LookupError as err:
            return {"op": "raise", "error": dict(error_record(err, import_error=True), message=str(err))}
        except BaseException as err:
            return {"op": "raise", "error": error_record(err, import_error=True)}
        before = wire.snapshot(args, kwargs, self.encode_function)
        restore = self.substitute([tuple(pair) for pair in request.get("substitute", [])])
        try:
            value = function(*args, **kwargs)
            reply = {"op": "return", "value": value}
        except BaseException as err:
            reply = {"op": "raise", "error": error_record(err)}
        finally:
            restore()
        reply["changed"] = wire.changed_arguments(before, args, kwargs, self.encode_function)
        return reply

    def substitute(self, functions: list[tuple[str, str]]):
        """Answer calls to these functions of the learner's modules from the trusted side; returns the undo."""
        wanted = set(functions)
        undo = []
        for qualified, module in list(sys.modules.items()):
            if not qualified.startswith(PACKAGE + ".") or module is None:
                continue
            for name, value in list(vars(module).items()):
                if inspect.isfunction(value) and value.__module__.startswith(PACKAGE + "."):
                    key = (value.__module__[len(PACKAGE) + 1:], value.__name__)
                    if key in wanted:
                        undo.append((module, name, value))
                        setattr(module, name, self.trusted_function(*key))

        def restore() -> None:
            for module, name, value in undo:
                setattr(module, name, value)
        return restore

    def trusted_function(self, module: str, name: str):
        def answered_by_the_grader(*args, **kwargs):
            self.send({"op": "callback", "module": module, "function": name, "args": list(args), "kwargs": kwargs})
            reply = self.receive()
            for key, value in reply.get("changed", []):
                wire.update_in_place(args[key] if isinstance(key, int) else kwargs[key], value)
            if reply.get("op") == "raise":
                raise rebuild_error(reply.get("error", {}))
            return reply.get("value")
        answered_by_the_grader.__name__ = answered_by_the_grader.__qualname__ = name
        answered_by_the_grader.answered_by_the_grader = (module, name)
        return answered_by_the_grader


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("fd", type=int)
    parser.add_argument("stubs", help="the folder of the course's stubs, for stand-ins")
    parser.add_argument("--drop-to", type=int)
    parser.add_argument("--nproc", type=int, default=0)
    parser.add_argument("--memory-mb", type=int, default=0)
    parser.add_argument("--cpu-seconds", type=int, default=0)
    options = parser.parse_args()
    sock = socket.socket(fileno=options.fd)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a file past the limit fails to write instead of killing us
    _limit(resource.RLIMIT_FSIZE, FILE_LIMIT)
    if options.cpu_seconds:
        _limit(resource.RLIMIT_CPU, options.cpu_seconds)
    import numpy  # noqa: F401  what every exercise uses, loaded before the learner's code and the memory cap
    import torch
    torch.set_num_threads(1)
    if options.drop_to is not None:
        _drop_privileges(options.drop_to)
    if options.nproc:
        _limit(resource.RLIMIT_NPROC, options.nproc)
    if options.memory_mb:
        _limit(resource.RLIMIT_AS, options.memory_mb * 2**20)
    sys.dont_write_bytecode = True
    try:
        Worker(sock, options.stubs).serve()
    except (wire.ChannelClosed, ConnectionError):
        pass  # the grader has gone: nothing left to do


if __name__ == "__main__":
    main()
