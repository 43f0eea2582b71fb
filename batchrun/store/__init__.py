"""The run folder's state: state.db (jobs and the attempts ledger), its migrations, records,
the transitions of a job's row, the lock, origin, atomic writes.

May import: util, errors.
"""
