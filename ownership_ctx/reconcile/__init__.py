"""Reconciliation with provider bills: importers, bill storage, the join with our events.

See docs/reconciliation.md. Import paths: `bills` (types), `importers` (files -> rows),
`fetch` (admin APIs), `storage` (bill tables), `join` (the reconciliation), `render`.
"""
