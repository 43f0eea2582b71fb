"""The run folder's state: state.db (jobs and the attempts ledger), its migrations, records, the
lock, origin, atomic writes.

May import: util, errors.
"""
