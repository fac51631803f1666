"""Reads: stored state shaped as Klaviyo's resources (profiles now; events and metrics next)."""
