"""The one exception type that means "the user's input is wrong".

The CLI turns it into a single line on stderr and exit code 2; everything else is a bug or an outage.
"""


class UserInputError(Exception):
    """Bad input (config, profile, fleet, data path): names the field or file it is about."""

    def __init__(self, where: str, message: str):
        self.where = where
        self.message = message
        super().__init__(f"{where}: {message}")
