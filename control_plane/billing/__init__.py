"""Billing: the ledger, wallets, prices, budgets, replay and exports.

``domain/`` holds the pure rules (no I/O, no database, no clock); the modules beside it wire
them to the database: ``consumer`` (the billing projection and its checkpoint), ``prices``
(the versioned price table and the stamps put into billable events), ``budget`` (budget
admission), ``replay`` (verification), ``snapshots`` (wallet snapshots) and ``export`` (the
JSONL file sink).
"""
