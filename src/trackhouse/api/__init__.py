"""The HTTP edge: Klaviyo's wire formats in, canonical submissions out to the log.

One module per endpoint family (`events`, `bulk`, `legacy`); the revision rules live in
`revision`, the limits in `limits`, the wire shapes in `wire`, and the translation from wire
to canonical model in `translate`.
"""
