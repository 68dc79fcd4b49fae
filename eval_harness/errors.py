"""Errors the harness raises before doing any expensive work."""


class ConfigError(ValueError):
    """A bad field in an eval YAML: the message names the field, the bad value and the fix."""
