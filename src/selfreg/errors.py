"""User-facing errors: the CLI prints them as one line and exits with code 2."""


class UserError(Exception):
    """A mistake in what the user asked for (bad path, unknown name, bad config).

    The message must say what is wrong and what to do, on one line.
    """
