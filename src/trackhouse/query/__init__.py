"""Reads: stored state shaped as Klaviyo's resources (`events`, `profiles`), the `filter`
parameter (`filters`) and metric aggregates (`aggregates`)."""
