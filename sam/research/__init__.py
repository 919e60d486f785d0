"""Research architectures from the design notes (../shared/seeds): each measured against a same-size baseline.

Install their extra dependencies with `pip install sam[research]`; the editing core does not need them.
"""
