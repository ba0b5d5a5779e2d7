"""Every error the package raises for a user's input, config or installation: one module, one base class.

The CLI turns an `EBTForecastError` into `ebt-forecast <command>: error: <message>` and exit code 2 (no
traceback); the message names the file, column, series, key or value at fault.
"""


class EBTForecastError(Exception):
    """Base of the errors a user can fix."""


class ConfigError(EBTForecastError, ValueError):
    """An invalid setting: the message names the key, the value and the allowed range."""


class DataError(EBTForecastError, ValueError):
    """Bad input data: the message names the file, column, series id or value at fault."""


class UsageError(EBTForecastError, ValueError):
    """A bad command line."""


class ConfigDirError(EBTForecastError, RuntimeError):
    """The configs did not come with this installation of ebt_forecast."""
