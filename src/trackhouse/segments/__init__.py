"""Segments: Klaviyo's segment definitions, parsed strictly (`definition.py`) and evaluated on a
profile (`evaluate.py`). Groups AND, conditions inside a group OR; an unset property matches
no condition but `is not set`, negations included; dates in UTC (design.md, Segments and
flows)."""
