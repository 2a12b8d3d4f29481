"""The error the spec builder raises for input it cannot turn into a valid spec."""

from __future__ import annotations


class SpecError(ValueError):
    """Bad or unsupported container configuration: report it as InvalidArgument."""
