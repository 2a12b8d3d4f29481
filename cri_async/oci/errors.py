"""Errors of building a spec, and what an OCI runtime's error output says. Pure."""

from __future__ import annotations

import re


class SpecError(ValueError):
    """Bad or unsupported container configuration: report it as InvalidArgument."""


class SpecUnsupported(SpecError):
    """A valid configuration this host or runtime cannot honour (a missing kernel feature,
    a runtime limitation): report it as FailedPrecondition."""


_LOGRUS_MSG = re.compile(r'level=(?:error|fatal|warning)\s+msg="((?:[^"\\]|\\.)*)"')


def runtime_message(text: str) -> str:
    """The human part of a runtime's error output.

    runc (and youki) log through logrus: ``time="..." level=error msg="runc create failed:
    ..."``; the quoted ``msg`` values are joined. Anything else (crun) is returned stripped.
    """
    msgs = [re.sub(r"\\(.)", r"\1", m) for m in _LOGRUS_MSG.findall(text)]
    return "; ".join(msgs) if msgs else text.strip()
