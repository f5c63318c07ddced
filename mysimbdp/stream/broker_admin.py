"""A small client of RabbitMQ's management HTTP API: vhosts, users, permissions, queue depths."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from types import TracebackType
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp

from mysimbdp.errors import BrokerUnavailable

__all__ = ["BrokerAdmin"]


class BrokerAdmin:
    """Async context manager around one HTTP session to the management API.

    ``url`` is like ``http://guest:guest@127.0.0.1:15672`` (credentials in the URL).
    """

    def __init__(self, url: str, timeout_s: float = 10.0) -> None:
        parts = urlsplit(url)
        self.base = f"{parts.scheme}://{parts.hostname}:{parts.port or 15672}/api"
        credentials = f"{parts.username or 'guest'}:{parts.password or 'guest'}".encode()
        self._headers = {"Authorization": "Basic " + base64.b64encode(credentials).decode()}
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> BrokerAdmin:
        self._session = aiohttp.ClientSession(headers=self._headers, timeout=self._timeout)
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(self, method: str, path: str, body: Any = None, ok_missing: bool = False) -> Any:
        """One API call; raises :class:`BrokerUnavailable` with the API's reason on failure."""
        assert self._session is not None, "use BrokerAdmin as 'async with'"
        try:
            async with self._session.request(method, self.base + path, json=body) as resp:
                if resp.status == 404 and ok_missing:
                    return None
                if resp.status >= 400:
                    text = await resp.text()
                    raise BrokerUnavailable(f"RabbitMQ management API {method} {path}: {resp.status} {text[:200]}")
                if resp.status == 204 or resp.content_length == 0:
                    return None
                return await resp.json(content_type=None)
        except aiohttp.ClientError as exc:
            raise BrokerUnavailable(f"RabbitMQ management API unreachable at {self.base}: {exc}; "
                                    "is the management plugin enabled (rabbitmq-plugins enable rabbitmq_management)?") from exc

    async def create_vhost(self, vhost: str) -> None:
        """Create ``vhost`` (no-op if it exists)."""
        await self.request("PUT", f"/vhosts/{quote(vhost, safe='')}")

    async def delete_vhost(self, vhost: str) -> None:
        """Delete ``vhost`` and everything in it (no-op if missing)."""
        await self.request("DELETE", f"/vhosts/{quote(vhost, safe='')}", ok_missing=True)

    async def put_user(self, user: str, password: str, tags: Sequence[str] = ()) -> None:
        """Create or update a user with ``password`` and exactly ``tags``."""
        await self.request("PUT", f"/users/{quote(user, safe='')}", {"password": password, "tags": list(tags)})

    async def user(self, user: str) -> dict[str, Any] | None:
        """A user's record (name, tags, password hash), or None if there is no such user."""
        result = await self.request("GET", f"/users/{quote(user, safe='')}", ok_missing=True)
        return result if isinstance(result, dict) else None

    async def put_user_without_password(self, user: str, tags: Sequence[str] = ()) -> None:
        """Create or update a user that cannot log in with a password (until one is set)."""
        await self.request("PUT", f"/users/{quote(user, safe='')}", {"password_hash": "", "tags": list(tags)})

    async def put_user_tags(self, record: dict[str, Any], tags: Sequence[str]) -> None:
        """Give the user of ``record`` (as :meth:`user` returns it) exactly ``tags``, keeping its password.

        The API has no call for tags alone (a PUT without a password clears it), so the
        user's own password hash goes back with the new tags.
        """
        body = {"password_hash": record.get("password_hash", ""), "tags": list(tags)}
        if record.get("hashing_algorithm"):
            body["hashing_algorithm"] = record["hashing_algorithm"]
        await self.request("PUT", f"/users/{quote(str(record['name']), safe='')}", body)

    @staticmethod
    def tags_of(record: dict[str, Any]) -> list[str]:
        """A user record's tags as a list (RabbitMQ 3.10 answers a list, older versions a comma-separated string)."""
        tags = record.get("tags") or []
        if isinstance(tags, str):
            tags = tags.split(",")
        return [str(tag).strip() for tag in tags if str(tag).strip()]

    async def delete_user(self, user: str) -> None:
        """Delete a user (no-op if missing)."""
        await self.request("DELETE", f"/users/{quote(user, safe='')}", ok_missing=True)

    async def set_permissions(self, vhost: str, user: str, configure: str, write: str, read: str) -> None:
        """Set a user's resource permissions (regexes) in ``vhost``."""
        await self.request("PUT", f"/permissions/{quote(vhost, safe='')}/{quote(user, safe='')}",
                           {"configure": configure, "write": write, "read": read})

    async def set_topic_permissions(self, vhost: str, user: str, exchange: str, write: str, read: str) -> None:
        """Restrict the routing keys ``user`` may publish (``write``) on a topic ``exchange``."""
        await self.request("PUT", f"/topic-permissions/{quote(vhost, safe='')}/{quote(user, safe='')}",
                           {"exchange": exchange, "write": write, "read": read})

    async def queue(self, vhost: str, name: str) -> dict[str, Any] | None:
        """A queue's statistics (``messages``, ``messages_ready``, rates...), or None if missing."""
        result = await self.request("GET", f"/queues/{quote(vhost, safe='')}/{quote(name, safe='')}", ok_missing=True)
        return result if isinstance(result, dict) else None
