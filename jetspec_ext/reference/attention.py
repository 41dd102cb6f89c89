"""Placeholder: implemented in its own issue."""


def tree_attention(*args, **kwargs):
    raise NotImplementedError("attention reference is not implemented yet")
