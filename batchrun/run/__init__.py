"""One run of a plan: the engine, the scheduler and its policies (budget, halt, canary), polling,
the run's downloads, the cache, progress and the closing lines.

May import: fetch and everything below it.
"""
