"""Access control: a configured bearer token or one basic-auth user; off only on localhost.

Browsers get the native basic-auth prompt (no login page, no session store). With only a
token configured, basic auth with the token as password (any user name) is accepted, so a
browser can log in too; scripts and Prometheus send ``Authorization: Bearer <token>``.
The one write action (outbox retry) additionally checks a form token against cross-site
requests, because browsers replay basic credentials on cross-site POSTs.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import ipaddress
from dataclasses import dataclass

from qcnode.config import Settings
from qcnode.errors import ConfigError

_LOCAL_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


def is_loopback(host: str) -> bool:
    """True when ``host`` names only this machine (127.0.0.0/8, ::1, localhost)."""
    if host.lower() in _LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, kw_only=True)
class AuthPolicy:
    token: str = ""
    user: str = ""
    password: str = ""

    @property
    def enabled(self) -> bool:
        return bool(self.token or (self.user and self.password))

    @classmethod
    def from_settings(cls, settings: Settings) -> AuthPolicy:
        """Build the policy; refuse to serve without credentials on a non-loopback address."""
        user = settings.web_user
        password = settings.web_password
        if bool(user) != bool(password):
            raise ConfigError("web_user and web_password must be set together")
        policy = cls(token=settings.web_token, user=user, password=password)
        if not policy.enabled and not is_loopback(settings.web_bind):
            raise ConfigError(
                f"the dashboard binds to {settings.web_bind}, not localhost: "
                "set web_token or web_user/web_password (QCNODE_WEB_TOKEN, ...)"
            )
        return policy

    def allows(self, authorization: str | None) -> bool:
        """Check an ``Authorization`` header value against the configured credentials."""
        if not self.enabled:
            return True
        if not authorization:
            return False
        scheme, _, value = authorization.partition(" ")
        scheme, value = scheme.lower(), value.strip()
        if scheme == "bearer":
            return bool(self.token) and _same(value, self.token)
        if scheme == "basic":
            try:
                decoded = base64.b64decode(value, validate=True).decode("utf-8")
            except (binascii.Error, UnicodeDecodeError):
                return False
            user, sep, password = decoded.partition(":")
            if not sep:
                return False
            if self.user and _same(user, self.user) and _same(password, self.password):
                return True
            return bool(self.token) and _same(password, self.token)
        return False


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))
