"""Placeholder: implemented in its own issue."""


def tree_attention(*args, **kwargs):
    raise NotImplementedError("attention is not implemented yet")
