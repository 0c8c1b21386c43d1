"""fastwatch's errors. Each message is one line that says what is wrong; the CLI alone prints them."""


class FastwatchError(Exception):
    "Something fastwatch cannot do; the message says why, in one line."


class StoreError(FastwatchError):
    "A store that cannot be opened, read or written."


class RunNotFound(StoreError, KeyError):
    "No run with that id in the store."
    def __str__(self): return self.args[0]


class UsageError(FastwatchError):
    "Arguments that cannot work: an output that exists, an unknown format, a repository name that is not OWNER/NAME."
