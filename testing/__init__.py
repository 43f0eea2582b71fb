"""Helpers shared by tests/ and benchmarks/ (not shipped in the wheel).

- `testing.cli`: run `batchrun` as a user does: a child process (`run_cli`, `batchrun_cmd`,
  `clean_env`) or in-process through click's CliRunner (`invoke`).
- `testing.simproc`: `batchrun simulate` in its own process (`start_simulator`, `SimProcess`).
- `testing.simulators`: in-process simulators started by a test and always stopped.
"""
