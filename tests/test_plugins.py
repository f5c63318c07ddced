"""The plugin contract: discovery through entry points, misspelt hooks, and every hook tested (by name) and documented."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pluggy
import pytest

from mysimbdp import hookimpl
from mysimbdp.apps import App, hookspecs
from mysimbdp.apps.plugins import get_plugin_manager, list_apps
from mysimbdp.errors import PluginError
from tests import test_hooks

ROOT = Path(__file__).resolve().parent.parent
HOOKS = sorted(name for name in dir(hookspecs) if name.startswith("mysimbdp_"))


def test_example_apps_are_discovered_through_entry_points() -> None:
    apps = {a.name: a for a in list_apps(get_plugin_manager())}
    assert apps["flights"].kinds[0] == "batch" and apps["flights"].distribution == "mysimbdp-flights"
    assert apps["weather"].version == "0.1.0"


def test_extra_apps_by_module_path() -> None:
    pm = get_plugin_manager({"batch_plain": "tests.plugins.batch_apps"}, load_entry_points=False)
    app = App(pm, "batch_plain").require("batch")
    assert app.kinds == ["batch"] and app.has("mysimbdp_batch_wrangle")
    assert app.has("mysimbdp_batch_check") and not app.has("mysimbdp_batch_wrangle_table")
    wrangle = app.hook("mysimbdp_batch_wrangle")
    assert wrangle is not None
    assert wrangle(record={"n": "4"}, context=SimpleNamespace(file="f.csv")) == {"n": 4, "file": "f.csv"}


def test_a_misspelt_hook_is_an_error_not_silence() -> None:
    class Misspelt:
        @hookimpl
        def mysimbdp_batch_wrangel(self, record: dict[str, object]) -> None:  # the typo is the test
            return None

    with pytest.raises(PluginError) as err:
        get_plugin_manager({"typo": Misspelt()}, load_entry_points=False)
    assert "mysimbdp_batch_wrangel" in str(err.value) and "docs/plugins.md" in str(err.value)


def test_missing_and_wrong_kind_apps_are_named() -> None:
    pm = get_plugin_manager({"batch_plain": "tests.plugins.batch_apps"}, load_entry_points=False)
    with pytest.raises(PluginError, match="no tenant app named 'nope'"):
        App(pm, "nope")
    with pytest.raises(PluginError, match="not a stream app"):
        App(pm, "batch_plain").require("stream")
    with pytest.raises(PluginError, match="cannot import module"):
        get_plugin_manager({"x": "tests.plugins.does_not_exist"}, load_entry_points=False)


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_is_documented(hook: str) -> None:
    docs = (ROOT / "docs" / "plugins.md").read_text()
    assert re.search(rf"^#+ .*`?{hook}\b", docs, re.MULTILINE), f"{hook} needs a heading in docs/plugins.md"
    assert getattr(hookspecs, hook).__doc__, f"{hook} needs a docstring"


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_has_a_test_named_after_it(hook: str) -> None:
    """A hook added to hookspecs without ``tests/test_hooks.py::test_hook_<hook>`` fails here."""
    test = getattr(test_hooks, f"test_hook_{hook}", None)
    assert inspect.isfunction(test), f"tests/test_hooks.py needs a test function named test_hook_{hook}"


def test_every_hook_test_names_a_hook() -> None:
    """A ``test_hook_<name>`` left behind by a renamed or removed hook is named too."""
    stale = [name for name, _ in inspect.getmembers(test_hooks, inspect.isfunction)
             if name.startswith("test_hook_") and name.removeprefix("test_hook_") not in HOOKS]
    assert HOOKS and not stale, f"tests for hooks that do not exist: {stale}"


def test_hooks_are_collected_from_the_hookspecs() -> None:
    pm = pluggy.PluginManager(hookspecs.PROJECT)
    pm.add_hookspecs(hookspecs)
    assert HOOKS == sorted(name for name in vars(pm.hook) if name.startswith("mysimbdp_"))
    assert all(getattr(pm.hook, h).spec.opts["firstresult"] for h in HOOKS)


def test_the_plugin_api_imports_light() -> None:
    """``from mysimbdp import ...`` in a tenant app loads neither pyarrow nor the runner nor the daemon."""
    code = ("import sys; from mysimbdp import Target, Index, BatchContext, MessageContext, Reject, hookimpl; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pyarrow', 'pymongo', 'aiohttp') "
            "or m.startswith(('mysimbdp.apps.runner', 'mysimbdp.daemon', 'mysimbdp.config'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]", out.stdout
