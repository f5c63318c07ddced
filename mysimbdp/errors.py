"""The exception hierarchy. Every message says what was wrong and what to do about it."""

from __future__ import annotations

__all__ = [
    "MysimbdpError",
    "ConfigError",
    "TenantProfileError",
    "PluginError",
    "StoreUnavailable",
    "BrokerUnavailable",
    "BrokerUserConflict",
    "Reject",
    "FileRejected",
]


class MysimbdpError(Exception):
    """Base of every error the platform raises on purpose."""


class ConfigError(MysimbdpError):
    """A platform setting is invalid; the daemon cannot start with it."""

    def __init__(self, setting: str, problem: str) -> None:
        self.setting = setting
        self.problem = problem
        super().__init__(f"invalid setting {setting}: {problem}")


class TenantProfileError(MysimbdpError):
    """A tenant profile file cannot be used; the message names the file, the key and the reason."""

    def __init__(self, path: str, key: str, problem: str) -> None:
        self.path = path
        self.key = key
        self.problem = problem
        super().__init__(f"{path}: {key}: {problem}")


class PluginError(MysimbdpError):
    """A tenant app is missing or does not follow the plugin contract."""


class StoreUnavailable(MysimbdpError):
    """MongoDB cannot be reached; the operation can be retried once it is back."""


class BrokerUnavailable(MysimbdpError):
    """RabbitMQ cannot be reached; the operation can be retried once it is back."""


class BrokerUserConflict(MysimbdpError):
    """A broker user with a tenant's name exists and this installation did not create it.

    The user was left as it was (password, tags and permissions); the message says how to
    resolve the clash (another prefix, or adopting the user).
    """


class Reject(MysimbdpError):
    """Raised by a tenant app to turn down one record; the record goes to ``_rejects``.

    The message is stored as the reject's ``reason``: say what is wrong with the record.
    """


class FileRejected(MysimbdpError):
    """A staged file is refused as a whole.

    ``code`` is a stable, machine-readable reason code (e.g. ``format``, ``too_big``,
    ``duplicate``); ``message`` explains it to a person.
    """

    def __init__(self, code: str, message: str, **details: object) -> None:
        self.code = code
        self.message = message
        self.details = details
        super().__init__(f"{code}: {message}")
