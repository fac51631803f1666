"""Messages and webhook bodies rendered as Klaviyo renders them: Django templates, with the
profile as `person` and the triggering event as `event` (`{{ person.email }}`,
`{{ event.ItemName }}`, `{{ event.items.0.url }}`, `{{ person|lookup:'Plan' }}`,
`{{ first_name|default:'friend' }}`), rendered by Django's own template engine.

An email's body is escaped as HTML; SMS, push and webhook text is not. A template that does
not compile is refused when the flow is created (`check`), with a pointer to it.

Rendering is bounded, whatever the template: a flow author must not be able to make
processing hang or fill memory (`{% with %}` chains of `|add` or `|escape` grow without end,
`|ljust:"999999999"` allocates at once). Each render has a budget (`TemplateTooCostly` when it
runs out: the message is skipped, saying so): MAX_PASSES loop passes in all, MAX_OUTPUT
characters of output (counted as each text and variable is rendered, loops included),
MAX_WORK characters that filters take in and give out, each filter's result at most MAX_VALUE
characters, and the width and precision of `ljust`, `rjust`, `center`, `floatformat` and
`stringformat` at most MAX_WIDTH. `{% lorem %}` and `{% debug %}`, and blocks nested more
than MAX_DEPTH deep, are refused when the flow is created.
"""

from __future__ import annotations

import contextvars
import functools
import itertools
import re
from functools import cache, lru_cache
from typing import Any

import django
from django.conf import settings

if not settings.configured:  # numbers and dates are formatted with no locale (no i18n)
    settings.configure(USE_TZ=True, TIME_ZONE="UTC", USE_I18N=False, INSTALLED_APPS=[])
    django.setup()

from django.template import (
    Context,
    Engine,
    Library,
    Node,
    TemplateSyntaxError,
    defaultfilters,
)
from django.template.base import Lexer, TextNode, TokenType, VariableNode
from django.template.defaulttags import ForNode

from trackhouse.process.profiles import Profile

MAX_RENDERED = 64 * 1024  # characters of one rendered text (admin pages list many)
MAX_PASSES = 10_000  # loop passes of one render, all loops together
MAX_OUTPUT = 1_000_000  # characters one render produces before its cut to MAX_RENDERED
MAX_WORK = 20_000_000  # characters filters take in and give out in one render
MAX_VALUE = 1_000_000  # characters (or items) of one filter's result
MAX_WIDTH = 1_000  # width or precision a filter's argument asks for
MAX_DEPTH = 50  # blocks within blocks (Django compiles and renders them recursively)
_BLOCKS = frozenset(("autoescape", "block", "comment", "filter", "for", "if", "ifchanged",
                     "spaceless", "verbatim", "with"))  # fmt: skip

register = Library()  # (Django looks the library up by this name)


class TemplateTooCostly(ValueError):
    """A render that would pass one of its bounds."""


class _Budget:
    __slots__ = ("output", "passes", "work")

    def __init__(self) -> None:
        self.passes, self.output, self.work = MAX_PASSES, MAX_OUTPUT, MAX_WORK


_budget: contextvars.ContextVar[_Budget] = contextvars.ContextVar("render_budget")


def _spend(what: str, amount: int) -> None:
    budget = _budget.get(None)
    if budget is None:
        return  # (compiling, or a test of a filter alone)
    left = getattr(budget, what) - amount
    setattr(budget, what, left)
    if left < 0:
        limits = {"passes": f"{MAX_PASSES:,} loop passes", "output": f"{MAX_OUTPUT:,} characters"
                  " of output", "work": f"{MAX_WORK:,} characters of filter work"}  # fmt: skip
        raise TemplateTooCostly(f"the template needs more than {limits[what]}")


def _size(value: Any) -> int:
    return len(value) if isinstance(value, str | bytes | list | tuple | dict) else 0


def _bounded(name: str, func: Any) -> Any:
    """A builtin filter whose work is charged to the render's budget and whose result is
    bounded, with width-like arguments checked before it runs."""

    @functools.wraps(func)
    def bounded(value: Any, *args: Any, **kwargs: Any) -> Any:
        if name in _WIDTH_ARGUMENT and args:
            wanted = max((int(n) for n in re.findall(r"\d+", str(args[0]))), default=0)
            if wanted > MAX_WIDTH:
                raise TemplateTooCostly(f"|{name} asks for {wanted:,}; at most {MAX_WIDTH:,}")
        if name == "join" and args and _size(value) * len(str(args[0])) > MAX_VALUE:
            raise TemplateTooCostly(f"|join would give more than {MAX_VALUE:,} characters")
        _spend("work", _size(value))
        result = func(value, *args, **kwargs)
        size = _size(result)
        if size > MAX_VALUE:
            raise TemplateTooCostly(f"|{name} gives more than {MAX_VALUE:,} characters")
        _spend("work", size)
        return result

    return bounded


_WIDTH_ARGUMENT = frozenset(("ljust", "rjust", "center", "floatformat", "stringformat"))
for _name, _func in defaultfilters.register.filters.items():
    _flags = {flag: getattr(_func, flag) for flag in ("is_safe", "needs_autoescape",
              "expects_localtime") if hasattr(_func, flag)}  # fmt: skip
    register.filter(_name, _bounded(_name, _func), **_flags)


@register.tag("lorem")
def _no_lorem(parser: Any, token: Any) -> Node:
    raise TemplateSyntaxError("{% lorem %} is not supported in flow templates")


@register.tag("debug")
def _no_debug(parser: Any, token: Any) -> Node:
    raise TemplateSyntaxError("{% debug %} is not supported in flow templates")


class _Sequence:
    """A for loop's sequence, its length charged to the render's loop passes before the
    loop runs."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def resolve(self, context: Any, ignore_failures: bool = False) -> Any:
        values = self.inner.resolve(context, ignore_failures=ignore_failures)
        if values is not None and not hasattr(values, "__len__"):
            values = list(itertools.islice(values, MAX_PASSES + 1))
        _spend("passes", 0 if values is None else len(values))
        return values

    def __str__(self) -> str:
        return str(self.inner)


def _metered(render: Any, context: Any) -> Any:
    out = render(context)
    _spend("output", len(out))
    return out


def _bound(template: Any) -> Any:
    """Charge the compiled template's loops, texts and variables to the render's budget."""
    for node in template.nodelist.get_nodes_by_type(Node):
        if isinstance(node, ForNode) and not isinstance(node.sequence, _Sequence):
            node.sequence = _Sequence(node.sequence)
        elif isinstance(node, TextNode | VariableNode):
            node.render_annotated = functools.partial(_metered, node.render_annotated)
    return template


@register.filter
def lookup(value: Any, key: Any) -> Any:
    """Klaviyo's `lookup`: a key that is not a Python name (`person|lookup:'Plan Name'`)."""
    if isinstance(value, dict):
        return value.get(key, "")
    return ""


@cache
def _engine(escape: bool) -> Engine:
    return Engine(autoescape=escape, libraries={},
                  builtins=["trackhouse.flows.render"])  # fmt: skip


@lru_cache(maxsize=1024)  # a flow's few templates, rendered for every profile
def _compiled(text: str, html: bool) -> Any:
    return _bound(_engine(html).from_string(text))


def check(text: str) -> str | None:
    """Why the template does not compile, or None."""
    depth = deepest = 0
    for token in Lexer(text).tokenize():  # Django's parser recurses into each block
        if token.token_type == TokenType.BLOCK:
            name = (token.split_contents() or [""])[0]
            depth += name in _BLOCKS or -(name.removeprefix("end") in _BLOCKS)
            deepest = max(deepest, depth)
    if deepest > MAX_DEPTH:
        return f"the template's blocks are nested more than {MAX_DEPTH} deep"
    try:
        _engine(False).from_string(text)
    except TemplateSyntaxError as exc:
        return str(exc)[:300]
    return None


def person_of(profile: Profile) -> dict[str, Any]:
    """A profile as templates read it: identifiers, attributes, location and properties at
    the top (as Klaviyo's `person` and its top-level `first_name`…)."""
    person: dict[str, Any] = {**profile.properties, **profile.location, **profile.attributes,
                              **profile.identifiers}  # fmt: skip
    person["id"] = profile.id
    return person


def render(text: str | None, person: dict[str, Any], event: dict[str, Any], *,
           html: bool = False) -> str | None:  # fmt: skip
    if text is None:
        return None
    template = _compiled(text, html)
    context = Context({**person, "person": person, "event": event}, autoescape=html)
    token = _budget.set(_Budget())
    try:
        out = template.render(context)
    finally:
        _budget.reset(token)
    # (NUL, which PostgreSQL text cannot hold, is dropped on both backends alike)
    return out[:MAX_RENDERED].replace("\x00", "")
