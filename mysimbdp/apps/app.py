"""One tenant app, ready to be called: a pluggy plugin manager of its own (internal).

The platform calls the hooks of the one app a tenant's profile names, so each app gets its
own :class:`pluggy.PluginManager` ("mysimbdp"): the hookspecs, the platform's default plugin
(:mod:`mysimbdp.apps.defaults`, ``trylast``), the app's module and the plugins that module
lists in ``mysimbdp_plugins``. Hooks are called as ``pm.hook.mysimbdp_x(...)``, so pluggy's
``firstresult``, ``tryfirst``/``trylast``, hookwrappers and monitoring all apply.

Per-record hooks are resolved once per batch of records (:meth:`App.caller`). Where the
resolution finds exactly one plain implementation and nothing monitors the calls, it hands
back that function, called with the arguments it declares: what pluggy would do with that
one implementation, without its ~1.6 us per call (the per-record path calls a hook or two
per record).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

import pluggy

from mysimbdp.apps import defaults, hookspecs
from mysimbdp.errors import PluginError

__all__ = ["App", "AppPluginManager", "app_plugin_manager", "BATCH_HOOKS", "STREAM_HOOKS", "PLUGINS_ATTRIBUTE"]

BATCH_HOOKS = ("mysimbdp_batch_wrangle", "mysimbdp_batch_wrangle_table")
STREAM_HOOKS = ("mysimbdp_stream_wrangle",)
#: The module attribute an app lists further plugins of its own in (module names or objects).
PLUGINS_ATTRIBUTE = "mysimbdp_plugins"

_Monitor = Callable[..., None]


class AppPluginManager(pluggy.PluginManager):
    """A ``mysimbdp`` plugin manager that knows whether something monitors its hook calls.

    ``enable_tracing()`` and ``add_hookcall_monitoring()`` count here, so :meth:`App.caller`
    never takes the direct path while a monitor would miss its calls.
    """

    def __init__(self) -> None:
        super().__init__(hookspecs.PROJECT)
        self.monitors = 0

    def add_hookcall_monitoring(self, before: _Monitor, after: _Monitor) -> Callable[[], None]:
        """pluggy's monitoring, counted (undone by the function it returns)."""
        undo = super().add_hookcall_monitoring(before, after)
        self.monitors += 1

        def undo_counted() -> None:
            undo()
            self.monitors -= 1

        return undo_counted


def app_plugin_manager(name: str, plugin: object) -> AppPluginManager:
    """The plugin manager of app ``name``: hookspecs, defaults, ``plugin`` and the plugins it lists.

    Raises :class:`PluginError` naming what is wrong: a hook that does not exist (a misspelt
    ``mysimbdp_batch_wrangel``), an implementation whose arguments the hook does not have, a
    listed plugin that cannot be imported.
    """
    pm = AppPluginManager()
    pm.add_hookspecs(hookspecs)
    pm.register(defaults, name=defaults.NAME)
    try:
        pm.register(plugin, name=name)
        for label, extra in _listed_plugins(name, plugin):
            pm.register(extra, name=f"{name}:{label}")
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"app {name!r}: {exc}; hooks are listed in docs/plugins.md") from exc
    except ValueError as exc:  # the same plugin registered twice
        raise PluginError(f"app {name!r}: {exc}") from exc
    return pm


def _listed_plugins(name: str, plugin: object) -> list[tuple[str, object]]:
    """The plugins an app lists in ``mysimbdp_plugins``, imported, with a label each."""
    listed = getattr(plugin, PLUGINS_ATTRIBUTE, ())
    if isinstance(listed, str) or not isinstance(listed, Sequence):
        raise PluginError(f"app {name!r}: {PLUGINS_ATTRIBUTE} must be a list of module names or objects")
    found: list[tuple[str, object]] = []
    for index, entry in enumerate(listed):
        if isinstance(entry, str):
            try:
                found.append((entry, importlib.import_module(entry)))
            except ImportError as exc:
                raise PluginError(f"app {name!r}: cannot import module {entry!r} listed in "
                                  f"{PLUGINS_ATTRIBUTE}: {exc}") from exc
        else:
            label = entry.__name__ if isinstance(entry, ModuleType) else f"{type(entry).__name__}#{index}"
            found.append((label, entry))
    return found


def _direct(impl: pluggy.HookImpl) -> Callable[..., Any]:
    """A call of one implementation with the arguments it declares, as pluggy makes it."""
    fn, names = impl.function, tuple(impl.argnames)
    if len(names) == 1:
        (only,) = names
        return lambda **kwargs: fn(kwargs[only])
    if len(names) == 2:
        first, second = names
        return lambda **kwargs: fn(kwargs[first], kwargs[second])
    return lambda **kwargs: fn(*[kwargs[n] for n in names])


class App:
    """One tenant app's hooks, in a plugin manager of its own.

    ``pm`` is any plugin manager the app is registered in under ``name`` (discovery:
    :func:`mysimbdp.apps.plugins.get_plugin_manager`); the app's own manager is :attr:`pm`.
    """

    def __init__(self, pm: pluggy.PluginManager, name: str) -> None:
        plugin = pm.get_plugin(name)
        if plugin is None:
            raise PluginError(
                f"no tenant app named {name!r} is installed; `mysimbdp apps` lists the installed "
                "apps: pip install the app's distribution or fix the name in the tenant profile")
        self.name = name
        self.distribution = _distribution_of(pm, plugin)
        self.pm = app_plugin_manager(name, plugin)

    def _implements(self, hook: str) -> bool:
        """Whether the app has a plain implementation of ``hook`` of its own (not a default, not
        only a wrapper): what makes it a batch or stream app, and what the loader asks for. Read
        from the plugin manager each time, so a plugin registered later counts."""
        caller = getattr(self.pm.hook, hook, None)
        return caller is not None and any(
            i.plugin_name != defaults.NAME and not (i.wrapper or i.hookwrapper) for i in caller.get_hookimpls())

    @property
    def kinds(self) -> list[str]:
        """``batch`` and/or ``stream``, from the hooks the app implements."""
        kinds = []
        if any(self._implements(h) for h in BATCH_HOOKS):
            kinds.append("batch")
        if any(self._implements(h) for h in STREAM_HOOKS):
            kinds.append("stream")
        return kinds

    @property
    def hooks(self) -> list[str]:
        """The names of the hooks the app implements (the platform's defaults not counted)."""
        return sorted(h for h in _hook_names() if self._implements(h))

    def has(self, hook: str) -> bool:
        """Whether the app implements ``hook`` (full name, ``mysimbdp_...``)."""
        return self._implements(hook)

    def caller(self, hook: str) -> Callable[..., Any] | None:
        """``hook`` resolved for a run of calls (keyword arguments), or None if the app does not
        implement it. Resolve again after registering a plugin or adding a monitor: a resolved
        caller keeps the implementations it found."""
        if not self._implements(hook):
            return None
        caller = getattr(self.pm.hook, hook)
        impls = caller.get_hookimpls()
        if self.pm.monitors or len(impls) != 1 or impls[0].wrapper or impls[0].hookwrapper:
            return caller  # type: ignore[no-any-return]
        return _direct(impls[0])

    def hook(self, hook: str) -> Callable[..., Any] | None:
        """Same as :meth:`caller` (the name older callers use)."""
        return self.caller(hook)

    def call(self, hook: str, **kwargs: Any) -> Any:
        """Call ``hook`` through the app's plugin manager (the defaults answer when the app does not)."""
        return getattr(self.pm.hook, hook)(**kwargs)

    def require(self, kind: str) -> App:
        """Return self if the app is of ``kind``, else raise :class:`PluginError`."""
        if kind not in self.kinds:
            raise PluginError(
                f"app {self.name!r} is not a {kind} app (it implements none of "
                f"{', '.join(BATCH_HOOKS if kind == 'batch' else STREAM_HOOKS)})")
        return self


def _hook_names() -> list[str]:
    return [name for name in vars(hookspecs) if name.startswith("mysimbdp_")]


def _distribution_of(pm: pluggy.PluginManager, plugin: object) -> tuple[str, str] | None:
    for p, dist in pm.list_plugin_distinfo():
        if p is plugin:
            return (dist.metadata["name"], dist.version)
    return None
