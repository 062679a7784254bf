"""Mutation testing of the reference solutions against the graded tests: do the tests notice a wrong solution?

For each exercise of the catalog, the code the learner writes in its functions (between `# BEGIN SOLUTION` and
`# END SOLUTION`: the solution and the input checks the learner writes; --provided adds the checks the course
provides) is changed in one small way at a time: a comparison flipped at its boundary, + and - or * and / swapped,
a constant off by one, an `axis=`/`keepdims=`/`dtype=` argument dropped, a conversion or a statement dropped, an
operand of an arithmetic operation dropped (`x - x.max()` -> `x`), max and min swapped, a function passed in
replaced by its default, ... Each mutant is written into a copy of solutions/ and only that exercise's graded tests
run against it (`pytest -m <id> --impl <copy>`). A mutant the tests fail is killed; one they pass survived: either it
behaves like the reference on every valid input (an equivalent mutant, listed with its reason in
tests/mutation/equivalent.py), or the graded tests miss a clause of the docstring (or, rarely, one the grader
cannot observe: listed there too, as NOT_GRADEABLE, with the reason).

    python tests/mutation/run.py [--exercise ID ...] [--max-mutants-per-exercise N] [--jobs 2] [--report FILE]

Why not mutmut: mutmut 3 switches mutants inside the tested process (trampolines reading $MUTANT_UNDER_TEST),
while the graded tests run the learner's code in a separate worker process that sees no environment variables and
imports a copy of the submission as the package `submission`; its mutants would never be switched on there.

Speed: --jobs test processes are forked from this one (pytest, NumPy and PyTorch imported once) and each runs
pytest in-process for one mutant after another, each in its own copy of solutions/, under a time limit. The
grader's worker that runs a mutant's code is forked from the test process too (the same Worker code, without a new
Python importing PyTorch for every mutant, which took most of the time); --exec-worker starts it as the grader does.
"""

from __future__ import annotations

import argparse
import ast
import copy
import difflib
import hashlib
import multiprocessing
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from pathlib import Path
from typing import Callable, Iterator

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from llmcourse.course import catalog  # noqa: E402

SOLUTIONS = ROOT / "solutions"
GRADED = ROOT / "tests" / "graded"
MUTANT_LIMIT = 180.0  # seconds one mutant's tests may take in all before it counts as killed by a time-out

# -- generating mutants ------------------------------------------------------------------------------------------

_COMPARE = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq,
            ast.NotEq: ast.Eq, ast.Is: ast.IsNot, ast.IsNot: ast.Is, ast.In: ast.NotIn, ast.NotIn: ast.In}
_BINOP = {ast.Add: (ast.Sub,), ast.Sub: (ast.Add,), ast.Mult: (ast.Div,), ast.Div: (ast.Mult,),
          ast.FloorDiv: (ast.Div,), ast.Pow: (ast.Mult,), ast.Mod: (ast.FloorDiv,), ast.LShift: (ast.RShift,),
          ast.RShift: (ast.LShift,), ast.BitAnd: (ast.BitOr,), ast.BitOr: (ast.BitAnd,)}
# a name (function, method or attribute) for another that is easy to confuse with it
_SWAP_NAMES = {"max": "min", "min": "max", "amax": "amin", "amin": "amax", "argmax": "argmin", "argmin": "argmax",
               "maximum": "minimum", "minimum": "maximum", "sum": "mean", "mean": "sum", "floor": "ceil",
               "ceil": "floor", "round": "floor", "rint": "floor", "float32": "float64", "float64": "float32",
               "int32": "int64", "int64": "int32", "int8": "int16", "uint8": "int8", "exp": "exp2", "log": "log2",
               "cumsum": "cumprod", "argsort": "sort", "topk": "sort", "var": "std", "std": "var",
               "clamp": "clip", "clip": "clamp", "append": "insert", "extend": "append"}
# calls whose removal leaves their receiver or their only argument: conversions and copies
_PASSTHROUGH_METHODS = {"astype", "copy", "clone", "contiguous", "to", "float", "double", "detach", "type",
                        "round", "clamp", "clip", "abs", "item", "squeeze", "unsqueeze", "reshape", "view"}
_PASSTHROUGH_FUNCTIONS = {"asarray", "array", "ascontiguousarray", "float32", "float64", "int64", "int32", "int8",
                          "uint8", "round", "rint", "floor", "ceil", "abs", "copy", "int", "float", "tuple",
                          "list", "sorted", "reversed", "as_tensor", "tensor"}


@dataclass
class Mutant:
    exercise: str
    module: str
    function: str
    label: str  # what was changed, e.g. "drop keepdims="
    source: str  # the whole mutated module
    diff: str  # the function before and after, as a small unified diff
    key: str  # its name in reports and in equivalent.py (mutant_key)


def solution_lines(text: str) -> list[tuple[int, int]]:
    """(first, last) line numbers of the code between each `# BEGIN SOLUTION` and `# END SOLUTION`."""
    spans, begin = [], None
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip() == "# BEGIN SOLUTION":
            begin = number
        elif line.strip() == "# END SOLUTION" and begin is not None:
            spans.append((begin + 1, number - 1))
            begin = None
    return spans


def _skipped_nodes(func: ast.FunctionDef, spans: list[tuple[int, int]] | None) -> set[int]:
    """ids of nodes not worth mutating: error messages, annotations, the docstring, and unless `spans` is None,
    code outside those line spans (what the learner does not write: provided checks of the input)."""
    skip: set[int] = set()
    if spans is not None:
        skip.update(id(n) for n in ast.walk(func) if getattr(n, "lineno", None) is not None
                    and not any(first <= n.lineno <= last for first, last in spans))

    def everything_under(node: ast.AST) -> None:
        skip.update(id(n) for n in ast.walk(node))

    for node in ast.walk(func):
        if isinstance(node, ast.Raise) and node.exc is not None:
            everything_under(node.exc)
        elif isinstance(node, ast.JoinedStr):
            everything_under(node)
        elif isinstance(node, ast.arg) and node.annotation is not None:
            everything_under(node.annotation)
        elif isinstance(node, ast.AnnAssign):
            everything_under(node.annotation)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("warn", "print"):
            everything_under(node)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr in ("reshape", "view"):
            # reshape(-1, ...): NumPy takes any negative size for "the rest", so -1 -> -2 changes nothing
            skip.update(id(a.operand) for a in node.args if isinstance(a, ast.UnaryOp) and isinstance(a.op, ast.USub))
    if func.returns is not None:
        everything_under(func.returns)
    for decorator in func.decorator_list:
        everything_under(decorator)
    for default in func.args.defaults + func.args.kw_defaults:
        if default is not None:
            everything_under(default)
    if _docstring(func) is not None:
        everything_under(func.body[0])
    return skip


def _docstring(func: ast.FunctionDef) -> ast.Expr | None:
    first = func.body[0] if func.body else None
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        return first
    return None


Edit = Callable[[ast.AST], ast.AST | None]  # changes a node in place, or returns the node that replaces it


def _edits(node: ast.AST, parent: ast.AST | None, injected: dict[str, str]) -> Iterator[tuple[str, Edit]]:
    """The mutations of one node: (label, edit). `injected`: parameters that are functions -> their defaults."""
    if isinstance(node, ast.Compare):
        for i, op in enumerate(node.ops):
            if type(op) in _COMPARE:
                new = _COMPARE[type(op)]
                yield f"{type(op).__name__} -> {new.__name__}", lambda n, i=i, new=new: n.ops.__setitem__(i, new())
    elif isinstance(node, ast.BinOp):
        for new in _BINOP.get(type(node.op), ()):
            yield f"{type(node.op).__name__} -> {new.__name__}", lambda n, new=new: setattr(n, "op", new())
        if not isinstance(node.op, ast.MatMult):
            yield "keep only the left operand", lambda n: n.left
    elif isinstance(node, ast.AugAssign):
        for new in _BINOP.get(type(node.op), ()):
            yield f"{type(node.op).__name__}= -> {new.__name__}=", lambda n, new=new: setattr(n, "op", new())
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.Not, ast.Invert)):
        yield f"drop unary {type(node.op).__name__}", lambda n: n.operand
    elif isinstance(node, ast.BoolOp):
        other = ast.Or if isinstance(node.op, ast.And) else ast.And
        yield f"{type(node.op).__name__} -> {other.__name__}", lambda n: setattr(n, "op", other())
        for i in range(len(node.values)):
            yield f"drop operand {i} of {type(node.op).__name__}", lambda n, i=i: _drop_value(n, i)
    elif isinstance(node, ast.Constant) and not isinstance(node.value, str) and node.value is not None:
        value = node.value
        if isinstance(value, bool):
            yield f"{value} -> {not value}", lambda n: setattr(n, "value", not n.value)
        elif isinstance(value, int):
            yield f"{value} -> {value + 1}", lambda n: setattr(n, "value", n.value + 1)
            yield f"{value} -> {value - 1}", lambda n: setattr(n, "value", n.value - 1)
        elif isinstance(value, float):
            yield f"{value} -> {value + 1}", lambda n: setattr(n, "value", n.value + 1)
            if value != 0:
                yield f"{value} -> 0.0", lambda n: setattr(n, "value", 0.0)
    elif isinstance(node, ast.keyword) and node.arg is not None and isinstance(parent, ast.Call):
        yield f"drop {node.arg}=", None  # handled by the parent: a keyword is removed from its call
    elif isinstance(node, ast.Call):
        func = node.func
        if isinstance(func, ast.Name) and func.id in injected:  # the function passed in is ignored
            default = injected[func.id]
            yield f"call {default} instead of the argument {func.id}", lambda n: setattr(n.func, "id", default)
        if isinstance(func, ast.Attribute) and func.attr in _PASSTHROUGH_METHODS:
            yield f"drop .{func.attr}(...)", lambda n: n.func.value
        elif isinstance(func, ast.Attribute) and func.attr in ("maximum", "minimum") and len(node.args) == 2:
            yield f"drop {func.attr}(x, ...)", lambda n: n.args[0]
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
        plain = isinstance(func, ast.Name) or (isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name)
                                               and func.value.id in ("np", "torch", "math"))
        if plain and name in _PASSTHROUGH_FUNCTIONS and len(node.args) == 1:
            yield f"drop {name}(...)", lambda n: n.args[0]
    if isinstance(node, ast.Attribute) and node.attr in _SWAP_NAMES:
        new = _SWAP_NAMES[node.attr]
        yield f".{node.attr} -> .{new}", lambda n, new=new: setattr(n, "attr", new)
    elif isinstance(node, ast.Name) and node.id in ("max", "min", "round", "sum") and isinstance(parent, ast.Call) \
            and parent.func is node:
        new = {"max": "min", "min": "max", "round": "int", "sum": "len"}[node.id]
        yield f"{node.id} -> {new}", lambda n, new=new: setattr(n, "id", new)
    if isinstance(node, ast.Slice):
        for part in ("lower", "upper", "step"):
            if getattr(node, part) is not None:
                yield f"drop the slice's {part} bound", lambda n, part=part: setattr(n, part, None)
    if isinstance(node, ast.Return) and isinstance(node.value, ast.Tuple) and len(node.value.elts) >= 2:
        for i in range(len(node.value.elts) - 1):
            yield f"swap returned values {i} and {i + 1}", lambda n, i=i: _swap(n.value.elts, i)


def _drop_value(node: ast.BoolOp, i: int) -> ast.AST:
    values = node.values[:i] + node.values[i + 1:]
    if len(values) == 1:
        return values[0]
    node.values = values
    return node


def _swap(items: list, i: int) -> None:
    items[i], items[i + 1] = items[i + 1], items[i]


def _statement_edits(body: list[ast.stmt], skip: set[int]) -> Iterator[tuple[int, str]]:
    """Statements whose deletion is a mutant: not a docstring, a return (None is caught at once) or a `pass`."""
    for i, stmt in enumerate(body):
        if id(stmt) in skip or isinstance(stmt, (ast.Return, ast.Pass)):
            continue
        if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
            continue
        yield i, "drop the statement"


class _Replace(ast.NodeTransformer):
    """Replace the node at position `target` of ast.walk's order by what `edit` makes of it."""

    def __init__(self, target: ast.AST, edit: Edit | None, keyword: bool = False):
        self.target, self.edit, self.keyword = target, edit, keyword

    def generic_visit(self, node: ast.AST) -> ast.AST:
        if isinstance(node, ast.Call) and self.keyword and self.target in node.keywords:
            node.keywords = [k for k in node.keywords if k is not self.target]
        if node is self.target and not self.keyword:
            result = self.edit(node)
            node = node if result is None else result
            return node
        return super().generic_visit(node)


def mutate_function(func: ast.FunctionDef, spans: list[tuple[int, int]] | None = None
                    ) -> Iterator[tuple[str, ast.FunctionDef]]:
    """Every mutant of a function: (label, mutated copy of the function), only of code within `spans` if given."""
    skip = _skipped_nodes(func, spans)
    parents = {id(child): node for node in ast.walk(func) for child in ast.iter_child_nodes(node)}
    order = list(ast.walk(func))
    arguments = func.args.args + func.args.kwonlyargs
    defaults = [None] * (len(func.args.args) - len(func.args.defaults)) + func.args.defaults + func.args.kw_defaults
    injected = {a.arg: d.id for a, d in zip(arguments, defaults) if isinstance(d, ast.Name)}
    for index, node in enumerate(order):
        if id(node) in skip or node is func:
            continue
        for label, edit in _edits(node, parents.get(id(node)), injected):
            mutant = copy.deepcopy(func)
            target = list(ast.walk(mutant))[index]
            mutant = _Replace(target, edit, keyword=edit is None).visit(mutant)
            yield label, mutant
        for field_name in ("body", "orelse", "finalbody"):
            body = getattr(node, field_name, None)
            if isinstance(body, list) and body and isinstance(body[0], ast.stmt):
                for i, label in _statement_edits(body, skip):
                    mutant = copy.deepcopy(func)
                    mutant_body = getattr(list(ast.walk(mutant))[index], field_name)
                    del mutant_body[i]
                    if not mutant_body:
                        mutant_body.append(ast.Pass())
                    yield label, mutant
    # the function's own body
    for i, label in _statement_edits(func.body, skip):
        mutant = copy.deepcopy(func)
        del mutant.body[i]
        if not mutant.body or (len(mutant.body) == 1 and _docstring(mutant)):
            mutant.body.append(ast.Pass())
        yield label, mutant


def mutant_key(function: str, label: str, before: str, after: str) -> str:
    """A short name for a mutant that stays the same while the code around it changes: the function, the kind of
    change and a digest of the changed lines. No code in it: tests/mutation/equivalent.py ships with a student
    release (every tracked file but solutions/ does), where no line of a solution may appear."""
    diff = list(difflib.ndiff(before.splitlines(), after.splitlines()))
    changed = "\n".join(line for line in diff if line.startswith(("- ", "+ ")))
    return f"{function}: {label} #{hashlib.sha1(changed.encode('utf-8')).hexdigest()[:8]}"


def mutants_of(exercise: catalog.Exercise, provided: bool = False) -> list[Mutant]:
    """Every distinct mutant of the code the learner writes in an exercise's functions (between the solution
    markers; with `provided`, of the whole functions, the input checks the course provides included)."""
    path = SOLUTIONS / f"{exercise.module}.py"
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines(keepends=True)
    tree = ast.parse(text)
    functions = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
    mutants, seen = [], set()
    spans = None if provided else solution_lines(text)
    for name in exercise.functions:
        func = functions[name]
        original = ast.unparse(func)
        start = (func.decorator_list[0].lineno if func.decorator_list else func.lineno) - 1
        for label, mutant in mutate_function(func, spans):
            ast.fix_missing_locations(mutant)
            try:
                mutated = ast.unparse(mutant)
                compile(mutated, str(path), "exec")
            except (SyntaxError, ValueError, TypeError, AttributeError):
                continue
            if mutated == original or (name, mutated) in seen:
                continue
            seen.add((name, mutated))
            source = "".join(lines[:start]) + mutated + "\n" + "".join(lines[func.end_lineno:])
            diff = "".join(difflib.unified_diff((original + "\n").splitlines(True), (mutated + "\n").splitlines(True),
                                                f"{exercise.module}.{name}", f"mutant: {label}", n=1))
            mutants.append(Mutant(exercise.id, exercise.module, name, label, source, diff,
                                  mutant_key(name, label, original, mutated)))
    return mutants


# -- running them ------------------------------------------------------------------------------------------------

@dataclass
class Outcome:
    mutant: Mutant | None  # None: the unchanged reference (the baseline)
    status: str  # killed | survived | timeout | error
    seconds: float
    detail: str = ""


def pytest_arguments(exercise: catalog.Exercise, submission: Path, sandbox: str, tests: Path = GRADED) -> list[str]:
    return [str(tests / f"test_{exercise.module}.py"), "-m", exercise.id, "--impl", str(submission),
            "--sandbox", sandbox, "--time-limit", "20", "-x", "-q", "--no-header", "-p", "no:cacheprovider",
            "-p", "no:xdist", "-W", "ignore::pytest.PytestAssertRewriteWarning", "--rootdir", str(ROOT),
            "-c", str(ROOT / "pyproject.toml")]


class _ForkedProcess:
    """What the grader's _Worker needs of its subprocess.Popen, for a worker forked from this process."""

    def __init__(self, pid: int):
        self.pid, self.returncode = pid, None

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"worker {self.pid}", timeout)
            time.sleep(0.01)
        return self.returncode


def _fork_workers() -> None:
    """Make the grader's sandbox fork its worker from this process (NumPy and PyTorch already imported) and run the
    worker's own code there, instead of starting a new Python; only without a sandbox (--sandbox none)."""
    from llmcourse.course.grading import sandbox, wire
    from llmcourse.course.grading import worker as worker_code

    def start(self, folder: Path, stubs: Path, mode: str, memory_mb: int) -> None:
        assert mode == "none", "a forked worker runs without a sandbox"
        ours, theirs = socket.socketpair()
        self.uid, self.sock, self.output = None, ours, tempfile.TemporaryFile()
        environment = sandbox._worker_environment()
        pid = os.fork()
        if pid == 0:  # the worker
            try:
                os.setsid()
                ours.close()
                os.dup2(self.output.fileno(), 1)
                os.dup2(self.output.fileno(), 2)
                os.chdir(folder)
                os.environ.clear()
                os.environ.update(environment)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                worker_code.Worker(theirs, str(stubs)).serve()
            except BaseException:
                pass
            finally:
                os._exit(0)
        theirs.close()
        self.process = _ForkedProcess(pid)
        reply = wire.loads(wire.receive(self.sock, time.monotonic() + sandbox.STARTUP_LIMIT))
        if reply != {"op": "ready"}:
            self.kill()
            raise sandbox.SandboxUnavailable("the forked worker did not start")

    worker_code.wire = wire  # the worker file imports wire.py as a top-level module: the same code
    sandbox._Worker.__init__ = start


JOBS_PER_SLOT = 60  # a test process is replaced after this many mutants, so nothing piles up in it


def _slot(connection, sandbox: str, tests: Path, fork_worker: bool, logs: str) -> None:
    """A test process, forked from the runner: for each job it receives, a copy of solutions/ with the mutant in
    it and pytest, in this process, running the exercise's graded tests against it; it sends back pytest's code."""
    import pytest
    if fork_worker:
        _fork_workers()
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 0)
    with tempfile.TemporaryDirectory(prefix="llmcourse-mutant-") as tmp:
        submission = Path(tmp) / "submission"
        submission.mkdir()
        for file in SOLUTIONS.glob("*.py"):
            shutil.copy(file, submission / file.name)
        os.chdir(tmp)
        for _ in range(JOBS_PER_SLOT):
            job = connection.recv()
            if job is None:
                break
            index, exercise_id, module, source = job
            target = submission / f"{module}.py"
            target.write_text(source if source is not None else (SOLUTIONS / f"{module}.py").read_text("utf-8"),
                              encoding="utf-8")
            log = os.open(str(Path(logs) / f"{index}.log"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(log, 1)
            os.dup2(log, 2)
            os.close(log)
            try:
                code = int(pytest.main(pytest_arguments(catalog.get(exercise_id), submission, sandbox, tests)))
            except BaseException as err:  # noqa: BLE001  reported as an error of the run, never a verdict
                print(f"the runner failed: {type(err).__name__}: {err}", flush=True)
                code = 3
            sys.stdout.flush()
            sys.stderr.flush()
            shutil.copy(SOLUTIONS / f"{module}.py", target)  # the next job starts from the reference
            connection.send((index, code))
    connection.close()
    os._exit(0)


def _failure_line(log: Path) -> str:
    """The first line of pytest's short summary: which test failed and why."""
    try:
        lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    for line in lines:
        if line.startswith(("FAILED ", "ERROR ")):
            return line[:300]
    return lines[-1][:300] if lines else ""


class _Slot:
    """One test process and the job it is running."""

    def __init__(self, context, sandbox: str, tests: Path, fork_worker: bool, logs: str):
        self.connection, theirs = context.Pipe()
        self.process = context.Process(target=_slot, args=(theirs, sandbox, tests, fork_worker, logs))
        self.process.start()
        theirs.close()
        self.job: int | None = None
        self.started = 0.0
        self.jobs_done = 0

    def give(self, index: int, exercise: catalog.Exercise, mutant: Mutant | None) -> None:
        self.connection.send((index, exercise.id, exercise.module, None if mutant is None else mutant.source))
        self.job, self.started = index, time.monotonic()

    def stop(self, kill: bool = False) -> None:
        if kill:
            self.process.kill()
        else:
            try:
                self.connection.send(None)
            except OSError:
                pass
        self.process.join(timeout=30)
        self.connection.close()


def run_all(jobs: list[tuple[catalog.Exercise, Mutant | None]], *, processes: int, sandbox: str,
            tests: Path = GRADED, fork_worker: bool = True,
            progress: Callable[[Outcome], None] = lambda outcome: None) -> list[Outcome]:
    """Run each (exercise, mutant) job (mutant None: the reference itself) in `processes` test processes."""
    context = multiprocessing.get_context("fork")
    pending = list(range(len(jobs)))
    outcomes: dict[int, Outcome] = {}
    with tempfile.TemporaryDirectory(prefix="llmcourse-mutation-logs-") as logs:
        slots: list[_Slot] = []

        def finish(slot: _Slot, status: str, detail: str = "") -> None:
            index = slot.job
            elapsed = time.monotonic() - slot.started
            if status in ("killed", "error") and not detail:
                detail = _failure_line(Path(logs) / f"{index}.log")
            outcomes[index] = Outcome(jobs[index][1], status, elapsed, detail)
            slot.job = None
            slot.jobs_done += 1
            progress(outcomes[index])

        while pending or any(slot.job is not None for slot in slots):
            for i, slot in enumerate(slots):  # replace worn-out or dead test processes
                if slot.job is None and (slot.jobs_done >= JOBS_PER_SLOT or not slot.process.is_alive()):
                    slot.stop()
                    slots[i] = _Slot(context, sandbox, tests, fork_worker, logs)
            while len(slots) < processes:
                slots.append(_Slot(context, sandbox, tests, fork_worker, logs))
            for slot in slots:
                if slot.job is None and pending:
                    index = pending.pop(0)
                    slot.give(index, *jobs[index])
            busy = [slot for slot in slots if slot.job is not None]
            wait([slot.connection for slot in busy] + [slot.process.sentinel for slot in busy], timeout=1.0)
            for slot in busy:
                if slot.connection.poll():
                    try:
                        _, code = slot.connection.recv()
                    except EOFError:
                        code = None
                    if code is not None:
                        status = {0: "survived", 1: "killed"}.get(code, "error")
                        finish(slot, status, "" if status != "error" else
                               f"pytest exit code {code}: {_failure_line(Path(logs) / f'{slot.job}.log')}")
                        continue
                if not slot.process.is_alive():
                    finish(slot, "error", f"the test process died (exit code {slot.process.exitcode})")
                    slot.jobs_done = JOBS_PER_SLOT
                elif time.monotonic() - slot.started > MUTANT_LIMIT:
                    slot.stop(kill=True)
                    finish(slot, "timeout", f"no verdict within {MUTANT_LIMIT:g} s")
                    slot.jobs_done = JOBS_PER_SLOT
        for slot in slots:
            slot.stop()
    return [outcomes[i] for i in range(len(jobs))]


# -- the report --------------------------------------------------------------------------------------------------

@dataclass
class ExerciseReport:
    exercise: str
    baseline: Outcome | None = None
    outcomes: list[Outcome] = field(default_factory=list)
    generated: int = 0

    def count(self, status: str) -> int:
        return sum(o.status == status for o in self.outcomes)


def load_known() -> tuple[dict[str, dict[str, str]], dict[str, dict[str, str]]]:
    """(EQUIVALENT, NOT_GRADEABLE) of tests/mutation/equivalent.py: {exercise id: {mutant key: why}} each."""
    path = Path(__file__).with_name("equivalent.py")
    namespace: dict = {}
    exec(compile(path.read_text(encoding="utf-8"), str(path), "exec"), namespace)
    return namespace["EQUIVALENT"], namespace["NOT_GRADEABLE"]


def format_report(reports: list[ExerciseReport], equivalent: dict[str, dict[str, str]],
                  not_gradeable: dict[str, dict[str, str]]) -> str:
    lines = [f"{'exercise':<26} {'mutants':>7} {'killed':>6} {'equiv.':>6} {'ungrad.':>7} {'survived':>8} "
             f"{'other':>5}"]
    missed_total = 0
    details = []
    for report in reports:
        same, blind = equivalent.get(report.exercise, {}), not_gradeable.get(report.exercise, {})
        survivors = [o for o in report.outcomes if o.status == "survived"]
        known = [o for o in survivors if o.mutant.key in same]
        unseen = [o for o in survivors if o.mutant.key in blind]
        missed = [o for o in survivors if o.mutant.key not in same and o.mutant.key not in blind]
        other = [o for o in report.outcomes if o.status in ("error", "timeout")]
        missed_total += len(missed)
        tested = f"{len(report.outcomes)}" + (f"/{report.generated}" if report.generated > len(report.outcomes) else "")
        lines.append(f"{report.exercise:<26} {tested:>7} {report.count('killed'):>6} {len(known):>6} "
                     f"{len(unseen):>7} {len(missed):>8} {len(other):>5}")
        if report.baseline is not None and report.baseline.status != "survived":
            details.append(f"== {report.exercise}: the unchanged reference does not pass its own graded tests "
                           f"({report.baseline.status}: {report.baseline.detail})")
        for o in missed:
            details.append(f"== {report.exercise}: SURVIVED ({o.mutant.label})\n   key: {o.mutant.key}\n"
                           + o.mutant.diff.rstrip())
        for o in known:
            details.append(f"-- {report.exercise}: equivalent: {o.mutant.key}\n   why: {same[o.mutant.key]}\n"
                           + o.mutant.diff.rstrip())
        for o in unseen:
            details.append(f"-- {report.exercise}: not gradeable here: {o.mutant.key}\n   why: {blind[o.mutant.key]}\n"
                           + o.mutant.diff.rstrip())
        for o in other:
            details.append(f"!! {report.exercise}: {o.status} ({o.mutant.label}): {o.mutant.key}: {o.detail}")
        if report.generated == len(report.outcomes):  # every mutant ran: a listed key none of them has is stale
            keys = {o.mutant.key for o in report.outcomes}
            details += [f"?? {report.exercise}: listed in equivalent.py but no longer a mutant: {key}"
                        for key in sorted((set(same) | set(blind)) - keys)]
    lines.append(f"surviving mutants not known to be equivalent: {missed_total}")
    return "\n".join(lines + [""] + details) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--exercise", action="append", help="only this exercise (repeatable); default: all")
    parser.add_argument("--max-mutants-per-exercise", type=int, default=None,
                        help="test at most this many mutants of each exercise, a fixed sample (seed 0)")
    parser.add_argument("--jobs", type=int, default=2, help="mutants tested at once (2)")
    parser.add_argument("--sandbox", default="none", choices=("none", "auto", "bubblewrap"),
                        help="where the mutant runs (default none: a plain subprocess, faster; the code is ours)")
    parser.add_argument("--tests", type=Path, default=GRADED,
                        help="the folder of graded tests, test_<module>.py each (default tests/graded)")
    parser.add_argument("--exec-worker", action="store_true",
                        help="start the grader's worker as a new Python process, as the grader does (slower)")
    parser.add_argument("--report", type=Path, default=None, help="also write the report to this file")
    parser.add_argument("--provided", action="store_true",
                        help="also mutate the code outside the solution markers (the input checks the course provides)")
    parser.add_argument("--list", action="store_true", help="only list the mutants, without running them")
    args = parser.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    exercises = [catalog.get(e) for e in args.exercise] if args.exercise else list(catalog.EXERCISES)
    reports, jobs = [], []
    for exercise in exercises:
        mutants = mutants_of(exercise, provided=args.provided)
        report = ExerciseReport(exercise.id, generated=len(mutants))
        if args.max_mutants_per_exercise is not None and len(mutants) > args.max_mutants_per_exercise:
            chosen = sorted(random.Random(0).sample(range(len(mutants)), args.max_mutants_per_exercise))
            mutants = [mutants[i] for i in chosen]
        if args.list:
            for m in mutants:
                print(f"{exercise.id}: {m.key}\n" + "".join(f"    {line}" for line in m.diff.splitlines(True)[2:]))
            continue
        reports.append(report)
        jobs += [(exercise, None)] + [(exercise, m) for m in mutants]
    if args.list:
        return 0
    by_id = {r.exercise: r for r in reports}
    start = time.monotonic()
    done = [0]

    def progress(outcome: Outcome) -> None:
        done[0] += 1
        name = "reference" if outcome.mutant is None else outcome.mutant.key
        name = name if outcome.status == "survived" else name[:100]
        print(f"[{done[0]}/{len(jobs)} {time.monotonic() - start:.0f}s] {outcome.status:<8} {name}", flush=True)

    for (exercise, mutant), outcome in zip(jobs, run_all(jobs, processes=args.jobs, sandbox=args.sandbox,
                                                         tests=args.tests.resolve(),
                                                         fork_worker=not args.exec_worker and args.sandbox == "none",
                                                         progress=progress)):
        if mutant is None:
            by_id[exercise.id].baseline = outcome
        else:
            by_id[exercise.id].outcomes.append(outcome)
    text = format_report(reports, *load_known())
    print(text)
    if args.report is not None:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(text, encoding="utf-8")
    bad_baseline = any(r.baseline is not None and r.baseline.status != "survived" for r in reports)
    return 1 if bad_baseline else 0


if __name__ == "__main__":
    # imported once here, so that each forked mutant starts with them loaded
    import numpy  # noqa: F401
    import pytest  # noqa: F401
    import torch  # noqa: F401
    sys.exit(main())
