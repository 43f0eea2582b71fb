"""The soaks: long runs against a simulator or a hostile server that injects every fault,
checking afterwards that nothing was lost, paid twice or left unexplained. They share the
reliability tests' harness (tests/reliability/conftest.py)."""

from tests.reliability.conftest import simulator as simulator  # the fixture, for the soaks
