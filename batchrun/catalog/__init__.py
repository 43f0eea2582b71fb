"""Model schemas and prices: find, normalise, validate, price. Shared with the simulator.

May import: util, errors.
"""
