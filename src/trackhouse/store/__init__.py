"""Stored state: accounts and their API keys (events, profiles, metrics and outcomes follow)."""
