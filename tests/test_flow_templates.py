"""Flow templates (flows/render.py) are rendered within bounds, whatever their author wrote:
each class of costly template (growth through `{% with %}` chains, widths, loops, joins, many
large variables) is refused with TemplateTooCostly instead of holding processing or filling
memory, and templates of normal size render as Django renders them."""

from __future__ import annotations

from typing import Any

import pytest

from trackhouse.flows import render as r

PERSON = {"email": "ann@example.com", "first_name": "Ann", "big": "x" * 100_000}
EVENT = {"items": [{"name": f"item {n}"} for n in range(100)], "ItemName": "Shoes",
         "text": "<b>" * 1_000, "w": "999999999", "amount": 3.14159}  # fmt: skip


def _render(text: str) -> str | None:
    return r.render(text, {**PERSON, "person": PERSON}, EVENT)


def _chain(filter_text: str, levels: int, start: str = "event.text") -> str:
    """`{% with v1=start|f %}{% with v2=v1|f %}…{{ vN|length }}{% endwith %}…`."""
    opens, last = [], start
    for n in range(levels):
        opens.append(f"{{% with v{n}={last}|{filter_text.replace('SELF', last)} %}}")
        last = f"v{n}"
    return "".join(opens) + f"{{{{ {last}|length }}}}" + "{% endwith %}" * levels


COSTLY = {
    "add doubling through with": _chain("add:SELF", 40),
    "list doubling through with": _chain("add:SELF", 40, start="event.items"),
    "join growth through with": _chain("make_list|join:SELF", 3),
    "filter work through with": _chain("force_escape|add:person.big", 45),
    "ljust literal width": '{{ event.ItemName|ljust:"999999999" }}',
    "rjust width from data": "{{ event.ItemName|rjust:event.w }}",
    "center width": '{{ event.ItemName|center:"5000000" }}',
    "floatformat precision": '{{ event.amount|floatformat:"100000" }}',
    "stringformat width": '{{ event.ItemName|stringformat:"09999999s" }}',
    "nested loops": "{% for a in event.items %}{% for b in event.items %}{% for c in "
                    "event.items %}x{% endfor %}{% endfor %}{% endfor %}",
    "loop over a long string": "{% for c in person.big %}{% for d in event.items %}{% endfor %}"
                               "{% endfor %}",
    "join quadratic": "{{ person.big|make_list|join:person.big }}",
    "many large variables": "{{ person.big }}" * 50,
    "large variable in a loop": "{% for i in event.items %}{{ person.big }}{% endfor %}",
    "filter work in a loop": "{% for i in event.items %}{% for j in event.items %}"
                             "{{ person.big|upper|length }}{% endfor %}{% endfor %}",
}  # fmt: skip


@pytest.mark.parametrize("text", COSTLY.values(), ids=COSTLY.keys())
def test_costly_templates_are_refused_within_bounds(text: str) -> None:
    assert r.check(text) is None  # they compile: the bound is at render time
    with pytest.raises(r.TemplateTooCostly):
        _render(text)


@pytest.mark.parametrize("tag", ["{% lorem 999999999 w %}", "{% debug %}"])
def test_tags_that_only_cost_are_refused_when_compiled(tag: str) -> None:
    assert "not supported" in (r.check(tag) or "")


def test_nesting_too_deep_to_compile_is_refused() -> None:
    assert r.check(_chain("upper", r.MAX_DEPTH)) is None
    for levels in (r.MAX_DEPTH + 1, 5_000):
        assert "nested more than" in (r.check(_chain("upper", levels)) or "")


NORMAL: list[tuple[str, Any]] = [
    ("{{ person.email }}", "ann@example.com"),
    ("{{ first_name|default:'friend' }} / {{ last_name|default:'friend' }}", "Ann / friend"),
    ("{% for i in event.items %}{% if forloop.counter <= 2 %}{{ i.name|upper }};{% endif %}"
     "{% endfor %}", "ITEM 0;ITEM 1;"),
    ("{{ event.ItemName|ljust:8 }}|", "Shoes   |"),
    ("{{ event.amount|floatformat:2 }}", "3.14"),
    ("{{ event.ItemName|stringformat:'10s' }}", "     Shoes"),
    ("{{ event.items|length }} {{ person.big|length }}", "100 100000"),
    ("{% with a=event.ItemName|add:'!' %}{{ a|add:a }}{% endwith %}", "Shoes!Shoes!"),
    ("{{ person.big }}", "x" * r.MAX_RENDERED),  # large, within bounds: cut as before
]  # fmt: skip


@pytest.mark.parametrize(("text", "expected"), NORMAL)
def test_templates_of_normal_size_render_as_django_does(text: str, expected: str) -> None:
    assert _render(text) == expected


def test_each_render_has_a_budget_of_its_own() -> None:
    text = ("{% for i in event.items|slice:':99' %}{% for j in event.items %}.{% endfor %}"
            "{% endfor %}")  # fmt: skip
    for _ in range(5):  # 99 + 9,900 passes each time: within the bound, never spent across
        assert _render(text) == "." * 9_900
