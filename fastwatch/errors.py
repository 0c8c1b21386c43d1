"""fastwatch's errors, one tree. Each message is one line that says what is wrong; the CLI alone prints them.

    FastwatchError
    ├── StoreError        a store that cannot be opened, read or written
    │   └── RunNotFound   no run with that id in the store
    ├── FetchError        an https URL that is refused, or a download that failed
    ├── QueryError        a dashboard page's query string that cannot be followed
    ├── OutputError       an output file or folder that exists, or is of the wrong kind
    ├── PublishError      a publish target that cannot be written to
    └── UsageError        command arguments that cannot work together
"""


class FastwatchError(Exception):
    "Something fastwatch cannot do; the message says why, in one line."


class StoreError(FastwatchError):
    "A store that cannot be opened, read or written."


class RunNotFound(StoreError, KeyError):
    "No run with that id in the store."
    def __str__(self): return self.args[0]


class FetchError(FastwatchError):
    "A URL that is refused, or a download that failed; the message names the URL's host, never what it answered."


class QueryError(FastwatchError, ValueError):
    "A page's query string that the dashboard cannot follow; the message says what it takes."


class OutputError(FastwatchError):
    "An output that exists (and may not be replaced), or a file where a folder is wanted, or the reverse."


class PublishError(FastwatchError, ValueError):
    "A publish target or interval that cannot work."


class UsageError(FastwatchError):
    "Command arguments that cannot work: an unknown format, a missing option, a repository name that is not OWNER/NAME."
