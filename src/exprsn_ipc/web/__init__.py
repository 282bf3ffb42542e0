"""HTTP side of a service: HTTPS serving, the development bypass, auth helpers, HTTP rate limits.

* :class:`HTTPSServerManager` (``web.https``): uvicorn with TLS, an HTTP→HTTPS
  redirect, graceful shutdown with hooks, signal handling.
* :class:`DevBypassMiddleware` / :data:`bypass_all`, :func:`should_bypass`,
  :func:`log_bypass_status` (``web.bypass``): the fail-closed development bypass
  and broker-token checks for ``x-broker-token``.
* :func:`require_auth`, :func:`validate_ca_token` (``web.auth``): example
  FastAPI dependencies that respect the bypass.
* :class:`HTTPRateLimitMiddleware` (``web.httplimit``): per-IP limits that do not
  count callers with a verified broker token.

See ``docs/https-and-bypass.md``.
"""

from __future__ import annotations

from exprsn_ipc.web.auth import AuthUser, CAToken, require_auth, validate_ca_token
from exprsn_ipc.web.bypass import DevBypassMiddleware, bypass_all, log_bypass_status, should_bypass
from exprsn_ipc.web.httplimit import HTTPRateLimitMiddleware
from exprsn_ipc.web.https import HTTPSRedirectApp, HTTPSServerManager, ServerSet, create_servers

__all__ = [
    "AuthUser",
    "CAToken",
    "DevBypassMiddleware",
    "HTTPRateLimitMiddleware",
    "HTTPSRedirectApp",
    "HTTPSServerManager",
    "ServerSet",
    "bypass_all",
    "create_servers",
    "log_bypass_status",
    "require_auth",
    "should_bypass",
    "validate_ca_token",
]
