"""Small helpers with no knowledge of batchrun's records: printable server text, pausing the GC,
media suffixes,
durations as text.

May import: nothing of batchrun but errors.
"""
