"""The CNI adapter's error, and how a failed plugin's output becomes one (no I/O).

A plugin reports failure with a non-zero exit and, on stdout, a JSON error object
(``code``, ``msg``, ``details``; CNI SPEC section 5); plugins that crash print only text.
"""

from __future__ import annotations

import json


class CNIError(Exception):
    """A plugin failed (or could not be run); the message names the plugin and its error."""

    def __init__(
        self,
        message: str,
        *,
        plugin: str = "",
        command: str = "",
        code: int | None = None,
        msg: str = "",
        details: str = "",
    ) -> None:
        super().__init__(message)
        self.plugin = plugin
        self.command = command
        self.code = code
        self.msg = msg
        self.details = details


def plugin_error(plugin: str, command: str, returncode: int, out: bytes, err: bytes) -> CNIError:
    """The error for a plugin run that exited with ``returncode`` != 0."""
    code: int | None = None
    msg = details = ""
    try:
        obj = json.loads(out)
    except ValueError:
        obj = None
    if isinstance(obj, dict):
        c = obj.get("code")
        code = c if isinstance(c, int) else None
        msg = str(obj.get("msg") or "")
        details = str(obj.get("details") or "")
    if not msg:
        text = err.decode(errors="replace").strip() or out.decode(errors="replace").strip()
        msg = text[-500:] or f"exit status {returncode}"
    text = f"CNI plugin {plugin} failed ({command}): {msg}"
    if details:
        text += f": {details}"
    if code is not None:
        text += f" (code {code})"
    return CNIError(text, plugin=plugin, command=command, code=code, msg=msg, details=details)
