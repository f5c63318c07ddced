"""What the platform hands tenant apps, and how it calls one app's hooks.

:class:`Target`, :class:`BatchContext` and :class:`MessageContext` are part of the plugin
API (see ``docs/plugins.md``). :class:`App` binds the hooks of one registered app so the
platform can call them in a loop without going through every plugin.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pluggy

from mysimbdp.errors import PluginError

__all__ = ["Target", "Index", "BatchContext", "MessageContext", "App", "BATCH_HOOKS", "STREAM_HOOKS"]

BATCH_HOOKS = ("mysimbdp_batch_wrangle", "mysimbdp_batch_wrangle_table")
STREAM_HOOKS = ("mysimbdp_stream_wrangle",)


@dataclass(frozen=True)
class Index:
    """An index to create on the target collection: ``keys`` as ``[(field, 1 | -1), ...]``."""

    keys: Sequence[tuple[str, int]]
    unique: bool = False
    name: str | None = None


@dataclass(frozen=True)
class Target:
    """Where an app's documents are written inside the tenant's own database."""

    collection: str = "records"
    indexes: Sequence[Index] = ()


@dataclass(frozen=True)
class BatchContext:
    """The file a batch app is wrangling records of."""

    tenant: str
    app: str
    file: str
    sha256: str
    format: str


@dataclass
class MessageContext:
    """The message a stream app is wrangling a record of."""

    tenant: str
    app: str
    routing_key: str
    message_id: str
    timestamp: datetime | None
    index: int = 0
    headers: dict[str, Any] = field(default_factory=dict)


def _bound_call(impl: pluggy.HookImpl) -> Callable[..., Any]:
    """A direct call of one hook implementation that honours the arguments it declares."""
    fn, names = impl.function, tuple(impl.argnames)

    def call(**kwargs: Any) -> Any:
        return fn(*[kwargs[n] for n in names])

    return call


class App:
    """One tenant app's hooks, looked up once by the app's registered name."""

    def __init__(self, pm: pluggy.PluginManager, name: str) -> None:
        plugin = pm.get_plugin(name)
        if plugin is None:
            raise PluginError(
                f"no tenant app named {name!r} is installed; `mysimbdp apps` lists the installed "
                "apps: pip install the app's distribution or fix the name in the tenant profile")
        self.name = name
        self.distribution = _distribution_of(pm, plugin)
        self._impls: dict[str, Callable[..., Any]] = {}
        for hook_name in pm.hook.__dict__:
            if not hook_name.startswith("mysimbdp_"):
                continue
            caller = getattr(pm.hook, hook_name)
            for impl in caller.get_hookimpls():
                if impl.plugin_name == name:
                    self._impls[hook_name] = _bound_call(impl)

    @property
    def kinds(self) -> list[str]:
        """``batch`` and/or ``stream``, from the hooks the app implements."""
        kinds = []
        if any(h in self._impls for h in BATCH_HOOKS):
            kinds.append("batch")
        if any(h in self._impls for h in STREAM_HOOKS):
            kinds.append("stream")
        return kinds

    @property
    def hooks(self) -> list[str]:
        """The names of the hooks the app implements."""
        return sorted(self._impls)

    def has(self, hook: str) -> bool:
        """Whether the app implements ``hook`` (full name, ``mysimbdp_...``)."""
        return hook in self._impls

    def hook(self, hook: str) -> Callable[..., Any] | None:
        """The direct caller of ``hook`` (keyword arguments), or None if not implemented."""
        return self._impls.get(hook)

    def call(self, hook: str, **kwargs: Any) -> Any:
        """Call ``hook`` if implemented, else return None."""
        fn = self._impls.get(hook)
        return None if fn is None else fn(**kwargs)

    def require(self, kind: str) -> App:
        """Return self if the app is of ``kind``, else raise :class:`PluginError`."""
        if kind not in self.kinds:
            raise PluginError(
                f"app {self.name!r} is not a {kind} app (it implements none of "
                f"{', '.join(BATCH_HOOKS if kind == 'batch' else STREAM_HOOKS)})")
        return self


def _distribution_of(pm: pluggy.PluginManager, plugin: object) -> tuple[str, str] | None:
    for p, dist in pm.list_plugin_distinfo():
        if p is plugin:
            return (dist.metadata["name"], dist.version)
    return None
