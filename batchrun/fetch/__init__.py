"""One job's files: which to fetch and how each is streamed into files/<job_id>/.

May import: api, plan, results, store, catalog, util, errors.
"""
