"""What people read: report.csv's format, the report, the contact sheet, compare and its
renderings, merge.

May import: store, catalog, util, errors.
"""
