"""The exception types the CLI reports in one line: the user's input is wrong (exit code 2), or the machine could
not start the embedded cluster (exit code 1). Everything else is a bug or an outage.
"""


class UserInputError(Exception):
    """Bad input (config, profile, fleet, data path): names the field or file it is about."""

    def __init__(self, where: str, message: str):
        self.where = where
        self.message = message
        super().__init__(f"{where}: {message}")

    def __reduce__(self) -> tuple[type, tuple[str, str]]:  # rebuilt from both parts in another process (an actor)
        return type(self), (self.where, self.message)


class ClusterStartError(RuntimeError):
    """The embedded Ray cluster did not start (or not on loopback): says why and what to do."""
