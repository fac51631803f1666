"""Processing: log entries become profiles, metrics, events and outcomes, exactly once.

`processor` runs the loop and the transaction; `identity` decides which profile a submission
is about; `profiles` merges what it says into that profile.
"""
