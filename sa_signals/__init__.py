"""Transaction-aware blinker signals and on_commit callbacks for SQLAlchemy sessions."""

from __future__ import annotations

from . import signals
from ._bridge import install
from ._bridge import uninstall
from ._runner import current_session
from .asyncio import current_async_session
from .asyncio import on_commit_async
from .changes import Change
from .changes import NOT_LOADED
from .exceptions import CoroutineMisuseError
from .exceptions import InstallError
from .exceptions import NotInstalledError
from .exceptions import OutsideCallbackError
from .exceptions import SaSignalsError
from .exceptions import ScopeError
from .exceptions import SessionLeftOpenError
from .on_commit import on_commit
from .scope import distinct_session
from .scope import session_scope
from .scope import SessionScope

__all__ = [
    "NOT_LOADED",
    "Change",
    "CoroutineMisuseError",
    "InstallError",
    "NotInstalledError",
    "OutsideCallbackError",
    "SaSignalsError",
    "ScopeError",
    "SessionLeftOpenError",
    "SessionScope",
    "current_async_session",
    "current_session",
    "distinct_session",
    "install",
    "on_commit",
    "on_commit_async",
    "session_scope",
    "signals",
    "uninstall",
]
