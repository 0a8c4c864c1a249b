"""One registry style for models, datasets, information estimators and protocols:

    MODELS = Registry("model", "--model")

    @MODELS.register("mlp")              # a name: decorates a function or class
    def _mlp(cfg, input_shape, num_classes): ...

    PROTOCOLS.register(Protocol(name="fit", ...))   # an object with a .name: registered as it is

`registry.get(name)` raises one ConfigError naming the option and the known names.
"""

from __future__ import annotations

from .errors import ConfigError


class Registry(dict):
    def __init__(self, kind: str, option: str):
        super().__init__()
        self.kind, self.option = kind, option

    def register(self, what):
        """register("name") is a decorator; register(obj) adds an object under obj.name; both return it."""
        if isinstance(what, str):
            def add(obj):
                self[what] = obj
                return obj
            return add
        self[what.name] = what
        return what

    def get(self, name: str):   # type: ignore[override]  # raises on an unknown name instead of a default
        if name not in self:
            raise ConfigError(self.option, f"unknown {self.kind} {name!r}; use one of {', '.join(sorted(self))}")
        return self[name]
