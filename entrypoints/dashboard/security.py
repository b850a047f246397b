"""Who may change anything: the token, the session cookie that proves it, and the CSRF check on every POST.

- Without a token the dashboard is read-only: every write is refused, whoever asks.
- With one, a person logs in by typing it (``POST /login``); the answer sets a session cookie
  ``<issued>.<nonce>.<mac>`` (HttpOnly, SameSite=Strict), where ``mac`` is an HMAC of the first two parts keyed
  by the token. Nothing is stored on the server; changing the token ends every session.
- Every form that writes carries a CSRF field: an HMAC of the session keyed by the token. A write needs the
  cookie and the matching field, so a page on another site cannot make the browser write (it can neither read
  the field nor send the cookie, which is SameSite=Strict), and a request whose ``Origin`` is another site is
  refused before anything else. Scripts may instead send ``Authorization: Bearer <token>`` (a browser never
  adds that header to a cross-site request by itself).
- ``read_only`` refuses every write, token or not.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets

import attrs

from hexq.core.errors import ConfigError

TOKEN_ENV = "HEXQ_DASHBOARD_TOKEN"
MIN_TOKEN_LENGTH = 16
SESSION_COOKIE = "hexq_dashboard_session"
SESSION_SECONDS = 12 * 3600


def resolve_token(given: str | None) -> str | None:
    """The token from the argument, else from ``HEXQ_DASHBOARD_TOKEN``; None when neither is set. A token
    shorter than 16 characters is refused: it would be the only thing between the network and a purge."""
    token = given if given is not None else os.environ.get(TOKEN_ENV)
    if token is None or token == "":
        return None
    if len(token) < MIN_TOKEN_LENGTH or token.strip() != token:
        raise ConfigError(f"the dashboard token must be at least {MIN_TOKEN_LENGTH} characters, without leading or "
                          "trailing spaces (it guards requeue and delete): generate one with "
                          "python -c 'import secrets; print(secrets.token_urlsafe(24))'")
    return token


@attrs.frozen
class Guard:
    """The write rules of one dashboard."""

    token: str | None = attrs.field(default=None, repr=False)
    read_only: bool = False

    @property
    def writes_possible(self) -> bool:
        return self.token is not None and not self.read_only

    def _mac(self, text: str) -> str:
        assert self.token is not None
        return hmac.new(self.token.encode(), text.encode(), hashlib.sha256).hexdigest()

    def token_matches(self, candidate: str) -> bool:
        return self.token is not None and hmac.compare_digest(candidate.encode(), self.token.encode())

    def new_session(self, now: float) -> str:
        body = f"{int(now)}.{secrets.token_urlsafe(16)}"
        return f"{body}.{self._mac('session:' + body)}"

    def session_valid(self, cookie: str | None, now: float) -> bool:
        if self.token is None or not cookie or cookie.count(".") != 2:
            return False
        issued, nonce, mac = cookie.split(".")
        if not issued.isdigit() or not hmac.compare_digest(mac, self._mac(f"session:{issued}.{nonce}")):
            return False
        return 0 <= now - int(issued) < SESSION_SECONDS

    def csrf_for(self, cookie: str) -> str:
        return self._mac("csrf:" + cookie)

    def csrf_valid(self, cookie: str, field: str | None) -> bool:
        return bool(field) and hmac.compare_digest(str(field), self.csrf_for(cookie))

    def bearer_valid(self, header: str | None) -> bool:
        if not header or not header.startswith("Bearer "):
            return False
        return self.token_matches(header[len("Bearer "):].strip())
