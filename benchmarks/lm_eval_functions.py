"""Functions of lm-eval's own task code that a spec may name: the only Python a task config reaches.

lm-eval's built-in task YAML names Python with `!function utils.doc_to_target` (a file beside the
YAML). A spec names the same function by value, as a table:

    doc_to_target = { lm_eval_function = "toxigen/utils.py:doc_to_target" }

that is, a `.py` file under the installed lm-eval's `lm_eval/tasks/` folder (path relative to it,
`/`-separated, every part an identifier, no `..`) and a public function defined at the top level of
that file. The code is lm-eval's, installed in the enclave image from the hash-pinned lock files
that are part of the code identity (enclave/measure.py), not the auditor's; anything else (a file
elsewhere, a module import, a name that is not a top-level `def`) is refused. The keys that may
hold one are `FUNCTION_KEYS`, plus `aggregation` of a `metric_list` entry.

Two steps, so that checking a spec never runs code: `check_function_ref` (spec side) reads the
file's syntax tree only; `resolve_lm_eval_function` (the runner, the document counts, a local spec
check) imports `lm_eval.tasks.<dir>.<file>` and makes sure the module came from that very file.
"""

from __future__ import annotations

import ast
import functools
import importlib
import importlib.util
import inspect
import re
from pathlib import Path
from typing import Any, Callable

from verifier.errors import UnusableInput

FUNCTION_KEY = "lm_eval_function"
# Task config keys whose value may be a function reference (besides metric_list[].aggregation).
FUNCTION_KEYS = ("doc_to_text", "doc_to_target", "doc_to_choice", "process_docs", "process_results")
_REF = re.compile(r"((?:[A-Za-z_][A-Za-z0-9_]{0,63}/){1,4})([A-Za-z_][A-Za-z0-9_]{0,63})\.py:([A-Za-z][A-Za-z0-9_]{0,63})")


class LmEvalFunctionError(UnusableInput):
    """A function reference that does not name a public function of lm-eval's own task code, or
    such a function failing on the auditor's data."""


def is_function_ref(value: Any) -> bool:
    """Whether a config value is a function reference (a table whose only key is `lm_eval_function`)."""
    return isinstance(value, dict) and set(value) == {FUNCTION_KEY}


@functools.cache
def tasks_root() -> Path:
    """The installed lm-eval's `lm_eval/tasks` folder, found without importing lm-eval."""
    spec = importlib.util.find_spec("lm_eval")
    if spec is None or not spec.submodule_search_locations:
        raise LmEvalFunctionError("lm-eval is not installed here, so functions of its task code cannot be named")
    return (Path(next(iter(spec.submodule_search_locations))) / "tasks").resolve()


def check_function_ref(value: Any) -> str:
    """The reference string of a `{ lm_eval_function = "dir/file.py:name" }` table, after checking
    that the file is a `.py` file inside the installed lm-eval's task folder and defines `name` as
    a public top-level function. Nothing is imported or executed. Raises `LmEvalFunctionError`."""
    if not is_function_ref(value):
        raise LmEvalFunctionError(f"a function is named as {{ {FUNCTION_KEY} = \"dir/file.py:name\" }}, a table with "
                                  "that one key")
    ref = value[FUNCTION_KEY]
    path, name = _parse(ref)
    try:
        tree = ast.parse(path.read_bytes(), filename=path.name)
    except (OSError, SyntaxError, ValueError, RecursionError):
        raise LmEvalFunctionError(f"{_show(ref)}: lm-eval's file cannot be read as Python") from None
    last = None
    for node in tree.body:
        if _binds(node, name):
            last = node
    if not isinstance(last, ast.FunctionDef):
        raise LmEvalFunctionError(f"{_show(ref)}: lm-eval's {path.relative_to(tasks_root()).as_posix()} defines no "
                                  f"top-level function {name!r}")
    return ref


def resolve_lm_eval_function(ref: str) -> Callable[..., Any]:
    """The function `ref` ("dir/file.py:name", as `check_function_ref` accepts it) names, imported
    from the installed lm-eval package as `lm_eval.tasks.<dir>.<file>`; refused unless the module
    came from that file and the name is a function defined there. A module that needs a package
    the image lacks is a clear error, not a traceback."""
    path, name = _parse(ref)
    module_name = "lm_eval.tasks." + ref.split(":", 1)[0].removesuffix(".py").replace("/", ".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise LmEvalFunctionError(f"{_show(ref)}: lm-eval's module needs the package {exc.name!r}, which is not "
                                  "installed here") from None
    origin = getattr(module, "__file__", None)
    if origin is None or Path(origin).resolve() != path:
        raise LmEvalFunctionError(f"{_show(ref)}: {module_name} does not come from lm-eval's file; refused")
    fn = getattr(module, name, None)
    if not inspect.isfunction(fn) or fn.__module__ != module_name:
        raise LmEvalFunctionError(f"{_show(ref)}: not a function defined in lm-eval's {module_name}")
    return fn


class LmEvalFunction:
    """A resolved reference as lm-eval gets it: callable, and shown by its reference (lm-eval writes
    a callable it cannot find the source of as `str(...)` into the resolved config, which goes into
    the statement; not a dataclass, which lm-eval's `asdict` would take apart, function address and
    all). A failure on a document becomes an `LmEvalFunctionError` naming the function and the
    error's type only: its message could quote the auditor's data."""

    __slots__ = ("ref", "fn")

    def __init__(self, ref: str, fn: Callable[..., Any]) -> None:
        self.ref, self.fn = ref, fn

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return self.fn(*args, **kwargs)
        except Exception as exc:
            raise LmEvalFunctionError(
                f"lm-eval's function {self.ref} failed ({type(exc).__name__}); check that the data has the "
                "columns and values the task reads (`aaudit auditor preset list` shows each preset's columns)"
            ) from None

    def __repr__(self) -> str:
        return f"{FUNCTION_KEY}:{self.ref}"


def resolve_functions(value: Any) -> Any:
    """`value` (a task config, or part of one) with every function reference replaced by its
    `LmEvalFunction`; other values are copied as they are."""
    if is_function_ref(value):
        ref = value[FUNCTION_KEY]
        return LmEvalFunction(ref, resolve_lm_eval_function(ref))
    if isinstance(value, dict):
        return {k: resolve_functions(v) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve_functions(v) for v in value]
    return value


def _parse(ref: Any) -> tuple[Path, str]:
    """(resolved file, function name) of a reference, checked to lie inside lm-eval's task folder."""
    m = _REF.fullmatch(ref) if isinstance(ref, str) else None
    if m is None:
        raise LmEvalFunctionError(f"{_show(ref)} must be \"dir/file.py:name\": a .py file under lm-eval's "
                                  "lm_eval/tasks/ folder (identifiers separated by '/', no '..') and a public "
                                  "function name")
    root = tasks_root()
    path = (root / m.group(1) / f"{m.group(2)}.py").resolve()
    if not path.is_relative_to(root) or not path.is_file():
        raise LmEvalFunctionError(f"{_show(ref)}: no such file in the installed lm-eval's lm_eval/tasks/ folder")
    return path, m.group(3)


def _binds(node: ast.stmt, name: str) -> bool:
    """Whether a top-level statement binds `name` (def, class, assignment, import)."""
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return node.name == name
    if isinstance(node, (ast.Import, ast.ImportFrom)):
        return any((a.asname or a.name.split(".")[0]) == name for a in node.names)
    if isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        return any(isinstance(n, ast.Name) and n.id == name for t in targets for n in ast.walk(t))
    return any(_binds(child, name) for child in ast.iter_child_nodes(node) if isinstance(child, ast.stmt))


def _show(ref: Any) -> str:
    text = repr(ref)
    return f"{FUNCTION_KEY} {text if len(text) <= 80 else text[:77] + '...'}"
