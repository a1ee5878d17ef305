"""The one Jinja environment for a spec's templates: sandboxed, with limits on what a template builds.

Used twice: to check templates when a spec is parsed (compiled, never rendered) and by the runner to
render them. Jinja evaluates constant expressions while it compiles (its optimizer, and the
constant parts of every output), so compiling `{{ 'x' * 10**10 }}` or `{{ '%0100000000d' % 1 }}`
in a plain environment computes the huge string right there, in the enclave server that parses an
uploaded spec. Here nothing is evaluated at compile time (`_NoFolding`, `optimized=False`); at
render time, in the job's own process, `*`, `**` and `+` are checked before they run, filters and
string methods that take a width check it first, `range` is capped, and every result and rendered
prompt is capped in size. Time is bounded by the job's deadline (enclave.jobs).
"""

from __future__ import annotations

import functools
from typing import Any, Callable

from jinja2 import Template, TemplateSyntaxError, UndefinedError, meta, nodes
from jinja2.compiler import CodeGenerator
from jinja2.sandbox import ImmutableSandboxedEnvironment

from verifier.errors import UnusableInput

MAX_RENDERED = 1 << 20   # items in any string or list a template builds, and any width it passes
MAX_RANGE = 10_000       # items in a `range`
MAX_INT_BITS = 1 << 16   # bits of an integer built by `*` or `**`


class TemplateLimit(UnusableInput):
    """A spec's template tried to build something larger than the template limits allow."""


class TemplateUndefined(UnusableInput):
    """A spec's template read a variable (a column) or an attribute the document does not have.

    The message names the template's owner and the variables, which come from the template, never
    from the data: Jinja's own message can quote an item key or value taken from the document.
    `owners` and `document` let the caller locate the row (`document` is the data: never shown)."""

    def __init__(self, where: str, reads: str, owners: tuple[str, ...], document: dict[str, Any]) -> None:
        super().__init__(f"{where}: the template reads {reads}")
        self.reads, self.owners, self.document = reads, owners, document


class LimitedTemplate(Template):
    owner = "a template of the spec"
    owners: tuple[str, ...] = ()  # the tasks whose config holds this template
    source = ""

    def render(self, *args: Any, **kwargs: Any) -> str:
        try:
            return _check_size(super().render(*args, **kwargs), "a rendered prompt")
        except TemplateLimit as exc:
            raise TemplateLimit(f"{self.owner}: {exc}") from None
        except UndefinedError:
            document = dict(*args, **kwargs)
            missing = tuple(sorted(set(self._variables()) - set(document) - set(self.environment.globals)))
            what = (f"template variable {', '.join(repr(v) for v in missing)}, which is not a column of the document"
                    if missing else "an attribute or element the document does not have")
            raise TemplateUndefined(self.owner, what, self.owners, document) from None

    def _variables(self) -> frozenset[str]:
        try:
            return frozenset(meta.find_undeclared_variables(self.environment.parse(self.source)))
        except TemplateSyntaxError:  # pragma: no cover - it compiled, so it parses
            return frozenset()


class _NoFolding(CodeGenerator):
    """Jinja's code generator, evaluating nothing at compile time but literal template text."""

    def _output_child_to_const(self, node: nodes.Expr, frame: Any, finalize: Any) -> str:
        if isinstance(node, nodes.TemplateData):
            return super()._output_child_to_const(node, frame, finalize)
        raise nodes.Impossible()


class LimitedEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox with size limits. `owners` maps a template's source to the tasks that use it, so
    a limit names the task."""

    intercepted_binops = frozenset({"*", "**", "+"})
    template_class = LimitedTemplate
    code_generator_class = _NoFolding
    owners: dict[str, list[str]] = {}

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        _check_binop(operator, left, right)
        return _check_size(super().call_binop(context, operator, left, right), f"the result of {operator!r}")

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805
        if isinstance(getattr(__obj, "__self__", None), str) and __obj.__name__ in _WIDTH_METHODS:
            _check_sizes(args, kwargs)
        return _check_size(super().call(__context, __obj, *args, **kwargs), "a call's result")

    def from_string(self, source: Any, *args: Any, **kwargs: Any) -> Any:
        template = super().from_string(source, *args, **kwargs)
        if isinstance(source, str):
            template.source = source
            if source in self.owners:
                template.owners = tuple(self.owners[source])
                template.owner = "task " + ", ".join(repr(t) for t in template.owners)
        return template


def limited_environment(filters: dict[str, Callable[..., Any]], owners: dict[str, list[str]] | None = None,
                        **options: Any) -> LimitedEnvironment:
    """A limited sandbox with Jinja's default filters plus `filters` (e.g. lm-eval's), all wrapped
    in the size limits, and the capped `range`."""
    env = LimitedEnvironment(**options, optimized=False)
    env.owners = dict(owners or {})
    env.filters.update(filters)
    env.filters = {name: _limited_filter(name, fn) for name, fn in env.filters.items()}
    env.globals["range"] = _limited_range
    return env


def lm_eval_environment(owners: dict[str, list[str]] | None = None) -> LimitedEnvironment:
    """lm-eval's own template settings and filters (its `regex_replace` among them) in the limited
    sandbox: what the runner renders a spec's templates with, and what `aaudit auditor check`
    renders them with on the auditor's machine, so that a template passing the check renders the
    same in the enclave."""
    import lm_eval.utils as lm_utils

    plain = lm_utils.env
    return limited_environment(plain.filters, owners, loader=plain.loader, undefined=plain.undefined,
                               keep_trailing_newline=plain.keep_trailing_newline)


def _check_binop(operator: str, left: Any, right: Any) -> None:
    """Refuse `*` and `**` whose result would be too large, before computing it."""
    if operator == "*":
        for seq, n in ((left, right), (right, left)):
            if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and len(seq) * n > MAX_RENDERED:
                raise TemplateLimit(f"{type(seq).__name__} * {n} would exceed {MAX_RENDERED} items")
        if isinstance(left, int) and isinstance(right, int) and left.bit_length() + right.bit_length() > MAX_INT_BITS:
            raise TemplateLimit(f"a product of integers would exceed {MAX_INT_BITS} bits")
    if operator == "**" and isinstance(left, int) and isinstance(right, int) and right > 0 \
            and right * max(abs(left).bit_length() - 1, 0) > MAX_INT_BITS:
        raise TemplateLimit(f"an integer power would exceed {MAX_INT_BITS} bits")


# Methods and filters whose integer arguments are output widths: checked before they allocate. Other
# calls only have their results checked, since their integer arguments may be data (`format`).
_WIDTH_METHODS = frozenset({"ljust", "rjust", "center", "zfill", "expandtabs"})
_WIDTH_FILTERS = frozenset({"center", "indent", "wordwrap"})


def _check_sizes(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Refuse a width argument above MAX_RENDERED."""
    for value in (*args, *kwargs.values()):
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_RENDERED:
            raise TemplateLimit(f"a width argument exceeds {MAX_RENDERED}")


def _check_size(value: Any, what: str) -> Any:
    if isinstance(value, (str, list, tuple)) and len(value) > MAX_RENDERED:
        raise TemplateLimit(f"{what} has more than {MAX_RENDERED} items")
    return value


def _limited_filter(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """A Jinja filter under the size limits (functools.wraps keeps Jinja's pass_* marker, which
    puts the environment or context before the filtered value)."""
    first = 2 if getattr(fn, "jinja_pass_arg", None) is not None else 1

    @functools.wraps(fn)
    def limited(*args: Any, **kwargs: Any) -> Any:
        if name in _WIDTH_FILTERS:
            _check_sizes(args[first:], kwargs)
        return _check_size(fn(*args, **kwargs), f"the {name} filter's result")

    return limited


def _limited_range(*args: int) -> range:
    out = range(*args)
    if len(out) > MAX_RANGE:
        raise TemplateLimit(f"range of {len(out)} items exceeds {MAX_RANGE}")
    return out
