"""trackhouse: a self-hosted customer-event platform with Klaviyo-compatible APIs."""

__version__ = "0.1.0"
