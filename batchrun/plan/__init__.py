"""manifest -> jobs: the manifest and its blocks, values from files, templates, the grid, the
checked plan and part of it.

May import: catalog, store, util, errors.
"""
