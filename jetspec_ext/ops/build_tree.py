"""Placeholder: implemented in its own issue."""


def build_tree(*args, **kwargs):
    raise NotImplementedError("build_tree is not implemented yet")
