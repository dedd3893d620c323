"""The core both halves stand on: settings, errors, secrets, the Feast store handle, the artifact layout,
model names, the event log and its schema, the ranking inputs transform and the copy LM's contract.

`training` (offline) and `serving` (online) import this and never each other; nothing here imports either
(tests/test_import_directions.py holds the rule).
"""
