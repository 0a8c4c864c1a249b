"""The errors rotelab raises for what a user can fix: each names what is wrong and the fix in one line."""

from __future__ import annotations

from pathlib import Path


class ConfigError(ValueError):
    """Bad input. `field` names the option (as the user typed it); the message says the fix."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}")


class StoreError(ValueError):
    """A run directory (or one of its files) is missing, damaged or busy. `path` is what was read."""

    def __init__(self, path, message: str):
        self.path = Path(path)
        super().__init__(message)


class RunLocked(StoreError):
    """Another live process writes this run directory; `holder` is its PID (as text)."""

    def __init__(self, path, message: str, holder: str = "unknown"):
        self.holder = holder
        super().__init__(path, message)


class StaleRun(StoreError):
    """A run directory made with other settings than its plan asks for (plan.config_differences): it
    is neither resumed nor counted done."""
