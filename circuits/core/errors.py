"""The one exception type users see: a one-line message that names what is wrong."""


class CircuitsError(Exception):
    """Bad input or an unusable resource. The CLI prints its message as a single line."""
