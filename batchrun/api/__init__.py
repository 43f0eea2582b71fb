"""The RunComfy HTTP API: the client, what its answers mean, the rate limit, connection failures,
proxy settings.

May import: store, catalog, util, errors.
"""
