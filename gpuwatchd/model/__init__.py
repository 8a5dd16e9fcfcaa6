"""Pure vocabulary: events and actions, causes and probe results, the record catalogue.

Data only. Nothing here does I/O or imports the layers around the core.
"""
