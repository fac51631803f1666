"""Messages and webhook bodies rendered as Klaviyo renders them: Django templates, with the
profile as `person` and the triggering event as `event` (`{{ person.email }}`,
`{{ event.ItemName }}`, `{{ event.items.0.url }}`, `{{ person|lookup:'Plan' }}`,
`{{ first_name|default:'friend' }}`), rendered by Django's own template engine.

An email's body is escaped as HTML; SMS, push and webhook text is not. A template that does
not compile is refused when the flow is created (`check`), with a pointer to it.
"""

from __future__ import annotations

from functools import cache, lru_cache
from typing import Any

import django
from django.conf import settings

if not settings.configured:  # numbers and dates are formatted with no locale (no i18n)
    settings.configure(USE_TZ=True, TIME_ZONE="UTC", USE_I18N=False, INSTALLED_APPS=[])
    django.setup()

from django.template import Context, Engine, Library, TemplateSyntaxError

from trackhouse.process.profiles import Profile

MAX_RENDERED = 64 * 1024  # characters of one rendered text (admin pages list many)

register = Library()  # (Django looks the library up by this name)


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
    return _engine(html).from_string(text)


def check(text: str) -> str | None:
    """Why the template does not compile, or None."""
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
    # (NUL, which PostgreSQL text cannot hold, is dropped on both backends alike)
    return template.render(context)[:MAX_RENDERED].replace("\x00", "")
