"""The HTTP edge: Klaviyo's wire formats in, canonical submissions out to the log.

One module per endpoint family (`events`, `bulk`, `legacy`, `receipts`, `event_reads`,
`metrics`, `profiles`, `admin`); the revision rules live in `revision`, the limits in `limits`,
the wire shapes in `wire`, the translation from wire to canonical model in `translate`, the
HTTP protocol's bounds in `http`, CORS for `/client/*` in `cors`.
"""
