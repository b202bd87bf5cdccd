"""Transaction-aware blinker signals and on_commit callbacks for SQLAlchemy sessions."""

from __future__ import annotations

from . import signals
from ._core.install import install
from ._core.install import uninstall
from ._core.records import Change
from ._core.records import NOT_LOADED
from ._core.runner import current_session
from .asyncio import current_async_session
from .asyncio import on_commit_async
from .exceptions import ChangeLoopError
from .exceptions import CoroutineMisuseError
from .exceptions import ExternalTransactionError
from .exceptions import InstallError
from .exceptions import NotInstalledError
from .exceptions import NotInstalledWarning
from .exceptions import OutsideCallbackError
from .exceptions import SaSignalsError
from .exceptions import SaSignalsWarning
from .exceptions import ScopeError
from .exceptions import SenderNameError
from .exceptions import SessionLeftOpenError
from .exceptions import WeakReceiverWarning
from .on_all_committed import on_all_committed
from .on_all_committed import on_all_committed_async
from .on_commit import on_commit
from .scope import distinct_session
from .scope import session_scope
from .scope import SessionScope

__version__ = "0.1.0.dev0"
"""The version of this package."""

__all__ = [
    "NOT_LOADED",
    "Change",
    "ChangeLoopError",
    "CoroutineMisuseError",
    "ExternalTransactionError",
    "InstallError",
    "NotInstalledError",
    "NotInstalledWarning",
    "OutsideCallbackError",
    "SaSignalsError",
    "SaSignalsWarning",
    "ScopeError",
    "SenderNameError",
    "SessionLeftOpenError",
    "SessionScope",
    "WeakReceiverWarning",
    "__version__",
    "current_async_session",
    "current_session",
    "distinct_session",
    "install",
    "on_all_committed",
    "on_all_committed_async",
    "on_commit",
    "on_commit_async",
    "session_scope",
    "signals",
    "uninstall",
]
