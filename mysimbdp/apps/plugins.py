"""Discovery: the installed tenant apps, found through the ``mysimbdp`` entry-point group.

The plugin manager made here holds every app found (for ``mysimbdp apps`` and to refuse a
misspelt hook early); each app is then called through a plugin manager of its own
(:class:`mysimbdp.apps.app.App`), never through this one.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from collections.abc import Iterable
from dataclasses import dataclass
from types import ModuleType

import pluggy

from mysimbdp.apps import hookspecs
from mysimbdp.apps.app import App
from mysimbdp.errors import PluginError

__all__ = ["ENTRY_POINT_GROUP", "get_plugin_manager", "AppInfo", "list_apps", "installed_app_names"]

#: The entry-point group tenant apps register under (pluggy's project name).
ENTRY_POINT_GROUP = hookspecs.PROJECT


def get_plugin_manager(extra: dict[str, object | ModuleType | str] | None = None,
                       load_entry_points: bool = True) -> pluggy.PluginManager:
    """A plugin manager with every installed app, plus ``extra`` apps registered by name.

    An ``extra`` value may be a module path, imported here.

    Raises :class:`PluginError` if an app implements a hook that does not exist (a misspelt
    hook would otherwise be silently ignored).
    """
    pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
    pm.add_hookspecs(hookspecs)
    if load_entry_points:
        try:
            pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
        except Exception as exc:  # a broken distribution must be named, not crash with a trace
            raise PluginError(f"cannot load tenant apps from entry points: {exc}") from exc
    for name, plugin in (extra or {}).items():
        if isinstance(plugin, str):
            try:
                plugin = importlib.import_module(plugin)
            except ImportError as exc:
                raise PluginError(f"app {name!r}: cannot import module {plugin!r}: {exc}") from exc
        pm.register(plugin, name=name)
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"{exc}; hooks are listed in docs/plugins.md") from exc
    return pm


@dataclass(frozen=True)
class AppInfo:
    """What ``mysimbdp apps`` shows of one installed app."""

    name: str
    kinds: tuple[str, ...]
    distribution: str | None
    version: str | None


def list_apps(pm: pluggy.PluginManager) -> list[AppInfo]:
    """Every registered app, sorted by name."""
    infos = []
    for name, _plugin in pm.list_name_plugin():
        if name is None:
            continue
        app = App(pm, name)
        dist = app.distribution
        infos.append(AppInfo(name, tuple(app.kinds), dist[0] if dist else None,
                             dist[1] if dist else None))
    return sorted(infos, key=lambda a: a.name)


def installed_app_names(extra: Iterable[str] = ()) -> set[str]:
    """The names of the installed apps (their entry points, none imported) and ``extra``'s."""
    return {ep.name for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)} | set(extra)
