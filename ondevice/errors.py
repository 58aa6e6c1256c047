"""The error type for a user's mistake: the CLI prints its message on one line and exits 2."""


class UserError(Exception):
    pass
