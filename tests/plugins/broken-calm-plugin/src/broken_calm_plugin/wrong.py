"""Exports something that is not a GenerativeHead subclass."""


def not_a_head() -> None:
    """A function, not a head class."""
