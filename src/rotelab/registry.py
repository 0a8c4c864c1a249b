"""One registry style for models, datasets, information estimators and protocols:

    MODELS = Registry("model", "--model", plugins="rotelab.models")

    @MODELS.register("mlp")              # a name: decorates a function or class
    def mlp(*, input_shape, num_classes, widths=(512,)): ...

    @MODELS.scheme("torchvision")        # a scheme: "torchvision:resnet18" -> the scheme's factory("resnet18")
    def _torchvision(name): ...

    PROTOCOLS.register(Protocol(name="fit", ...))   # an object with a .name: registered as it is

A name is found among the registered names, then as SCHEME:REST, then among the entry points of the
registry's plugin group (a third-party package's `[project.entry-points."rotelab.models"]`), then,
where the registry takes import paths, as MODULE:FUNCTION. `registry.get(name)` raises one
ConfigError naming the option and the known names.
"""

from __future__ import annotations

from .errors import ConfigError


class Registry(dict):
    def __init__(self, kind: str, option: str, plugins: str | None = None, import_paths: bool = False):
        super().__init__()
        self.kind, self.option = kind, option
        self.plugins, self.import_paths = plugins, import_paths
        self.schemes: dict = {}   # prefix -> factory(rest) -> what a registered name gives
        self._plugins_loaded = False

    def register(self, what):
        """register("name") is a decorator; register(obj) adds an object under obj.name; both return it."""
        if isinstance(what, str):
            def add(obj):
                self[what] = obj
                return obj
            return add
        self[what.name] = what
        return what

    def scheme(self, prefix: str, help: str = ""):
        """A decorator: factory(rest) answers every name "prefix:rest"."""
        def add(factory):
            factory.scheme_help = help
            self.schemes[prefix] = factory
            return factory
        return add

    def load_plugins(self) -> None:
        """Register the entry points of the plugin group once (a package's own names win)."""
        if self._plugins_loaded or not self.plugins:
            return
        self._plugins_loaded = True
        from importlib.metadata import entry_points
        for ep in entry_points(group=self.plugins):
            if ep.name not in self:
                self[ep.name] = PluginEntry(ep)

    def names(self) -> list[str]:
        self.load_plugins()
        return sorted(self)

    def get(self, name: str):   # type: ignore[override]  # raises on an unknown name instead of a default
        if name in self:
            return self._loaded(name)
        prefix, sep, rest = str(name).partition(":")
        if sep and prefix in self.schemes:
            if not rest:
                raise ConfigError(self.option, f"{prefix}: needs a name after the colon, e.g. {prefix}:NAME")
            return self.schemes[prefix](rest)
        self.load_plugins()
        if name in self:
            return self._loaded(name)
        if sep and self.import_paths and rest:
            return import_object(prefix, rest, self.option)
        forms = "".join(f", {p}:NAME" for p in self.schemes) + (", MODULE:FUNCTION" if self.import_paths else "")
        raise ConfigError(self.option, f"unknown {self.kind} {name!r}; use one of {', '.join(sorted(self))}{forms}")

    def _loaded(self, name: str):
        obj = self[name]
        if isinstance(obj, PluginEntry):
            try:
                self[name] = obj = obj.ep.load()
            except Exception as e:
                raise ConfigError(self.option, f"the plugin {self.kind} {name!r} ({obj.ep.value}) does not "
                                               f"load: {type(e).__name__}: {e}") from None
        return obj


class PluginEntry:
    """An entry point not imported yet (loading a plugin costs its imports: only when it is used)."""

    def __init__(self, ep):
        self.ep = ep

    def __repr__(self):
        return f"plugin {self.ep.value}"


def import_object(module: str, attr: str, option: str):
    """MODULE:ATTR imported; a module in the working folder is found as `python -m` would find it."""
    import importlib
    import os
    import sys
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if e.name != module.split(".")[0] or os.getcwd() in sys.path:
            raise ConfigError(option, f"cannot import {module!r} ({e}); install it or run from its folder") from None
        sys.path.insert(0, os.getcwd())
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e2:
            raise ConfigError(option, f"cannot import {module!r} ({e2}); install it or run from its folder") from None
    except Exception as e:
        raise ConfigError(option, f"importing {module!r} failed: {type(e).__name__}: {e}") from None
    obj = mod
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(option, f"{module!r} has no {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(option, f"{module}:{attr} is not callable")
    return obj
