"""Flows: Klaviyo's flow definitions, checked strictly against Klaviyo's own schemas
(`spec.py`, `definition.py`), entered in the processing transaction that stores the triggering
event or join (`entry.py`), their steps run exactly once as they fall due on the account's
clock (`runner.py`, with `filters.py` and Django templates in `render.py`), and their webhooks
attempted at least once with retries (`webhooks.py`). The store's side is store/flows.py;
docs/flows.md describes the whole (design.md, Segments and flows)."""
