"""One-line error messages for users (Ray wraps remote errors in long tracebacks)."""

from __future__ import annotations


def one_line(e: BaseException) -> str:
    """The innermost error as ``"Type: message"`` on one line.

    Ray's ``RayTaskError``/``RayActorError`` carry the original exception in ``cause``; its last
    message line is kept.
    """
    cause = getattr(e, "cause", None) or e
    msg = str(cause).strip().splitlines()
    line = msg[-1] if msg else type(cause).__name__
    name = type(cause).__name__
    return line if line.startswith(name) else f"{name}: {line}"
