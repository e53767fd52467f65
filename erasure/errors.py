"""The one exception type users see: a one-line message that names the fix."""


class ErasureError(Exception):
    """Bad input or state the user can fix; the CLI prints it as one line and exits 2."""
