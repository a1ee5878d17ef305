"""No exception class outside the AAuditError tree (issue 13): every error the project defines says
which exit code it means (UnusableInput: 2, any other AAuditError: 1), so no caller has to guess
whether a RuntimeError or ValueError it meets is the project's or a bug.

Every module of the project's packages is imported and every class its source defines is checked;
an exception class defined inside a function cannot be checked that way, so it is refused as well.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

from verifier.errors import AAuditError, UnusableInput, VerificationError

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("aaudit", "benchmarks", "enclave", "gateway", "sealing", "tlog", "verifier")  # protos: generated code


def _modules() -> list[tuple[str, ast.Module]]:
    out = []
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out.append((name, ast.parse(path.read_text(), str(path))))
    return out


MODULES = _modules()


def _classes(tree: ast.Module) -> tuple[list[str], list[ast.ClassDef]]:
    """(qualified names of classes reachable as attributes, classes defined inside functions)."""
    reachable: list[str] = []
    hidden: list[ast.ClassDef] = []

    def walk(node: ast.AST, prefix: str, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                if in_function:
                    hidden.append(child)
                else:
                    reachable.append(prefix + child.name)
                walk(child, prefix + child.name + ".", in_function)
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                walk(child, prefix, True)
            else:
                walk(child, prefix, in_function)

    walk(tree, "", False)
    return reachable, hidden


def _exception_like(node: ast.ClassDef) -> bool:
    """A base whose name says it is an exception (the only thing visible of a class inside a function)."""
    return any(ast.unparse(b).split(".")[-1].endswith(("Error", "Exception", "Exit", "Warning", "Interrupt"))
               for b in node.bases)


def _outliers(module: str, tree: ast.Module) -> list[str]:
    mod = importlib.import_module(module)
    reachable, hidden = _classes(tree)
    bad = []
    for qualname in reachable:
        obj: object = mod
        for part in qualname.split("."):
            obj = getattr(obj, part)
        if isinstance(obj, type) and issubclass(obj, BaseException) and not issubclass(obj, AAuditError):
            bad.append(f"{module}.{qualname}({', '.join(b.__name__ for b in obj.__bases__)})")
    bad += [f"{module}: {c.name} (line {c.lineno}) is defined inside a function" for c in hidden if _exception_like(c)]
    return bad


@pytest.mark.parametrize("module", [name for name, _ in MODULES])
def test_every_exception_class_derives_from_aaudit_error(module: str) -> None:
    tree = dict(MODULES)[module]
    assert not _outliers(module, tree), "derive these from verifier.errors.AAuditError (UnusableInput for exit 2)"


def test_the_walk_sees_the_known_error_classes() -> None:
    """The check above cannot pass vacuously: it finds the project's errors where they are defined."""
    found = {q for name, tree in MODULES for q in (f"{name}.{c}" for c in _classes(tree)[0])}
    assert {"verifier.errors.AAuditError", "verifier.x509chain.ChainError", "verifier.der.DerError",
            "enclave.tee.AttestationError", "enclave.tee.configfs_tsm._Retry", "sealing.errors.SealError",
            "tlog.backend.LogError"} <= found


def test_a_class_outside_the_tree_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The rule catches what it is for: module-level, nested and function-local error classes outside the tree."""
    source = ("from verifier.errors import UnusableInput\n"
              "class Fine(UnusableInput): pass\n"
              "class Oops(ValueError): pass\n"
              "class Holder:\n    class Inner(Exception): pass\n"
              "def f():\n    class Hidden(RuntimeError): pass\n")
    (tmp_path / "errors_tree_probe.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    assert _outliers("errors_tree_probe", ast.parse(source)) == [
        "errors_tree_probe.Oops(ValueError)", "errors_tree_probe.Holder.Inner(Exception)",
        "errors_tree_probe: Hidden (line 7) is defined inside a function"]


def test_exit_code_meaning_of_the_former_outliers() -> None:
    from enclave.tee import AttestationError
    from enclave.tee.configfs_tsm import _Retry
    from verifier.der import DerError
    from verifier.x509chain import ChainError

    assert issubclass(DerError, UnusableInput)  # bytes that are not the DER they claim: exit 2
    assert issubclass(ChainError, VerificationError)  # a chain that does not verify: exit 1
    for cls in (AttestationError, _Retry):  # the device could not attest: exit 1
        assert issubclass(cls, AAuditError) and not issubclass(cls, UnusableInput)
