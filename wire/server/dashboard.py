"""The web dashboard at ``/ui/``: one-time login links, sessions, and the
pages' assets, all from the server itself.

- ``wire admin dashboard`` (the admin socket) makes a login link:
  ``https://SERVER/ui/login#TOKEN``, valid LINK_LIFETIME seconds, once.
  The token rides in the URL's fragment, which a browser never sends:
  it is in no access log and no Referer. The login page's script posts it
  to ``/ui/session``, which answers with the session cookie
  (``HttpOnly; Secure; SameSite=Strict``, expiring with the session).
- A session is an admin for the remote API (wire.server.adminapi) as
  ``dashboard:ID``; a request that changes anything must carry the
  session's CSRF token in ``X-CSRF-Token``, which only the server's own
  page can read (it is in the page, not in a cookie).
- No session: ``/ui/`` is the login page, with no data in it.
- Every answer under ``/ui/`` carries a Content-Security-Policy that lets
  the page load only this server's own scripts and styles and talk only to
  this server; every asset ships in the package (wire/server/ui), nothing
  is fetched from anywhere else.

Links and sessions are kept in memory, hashed (a memory dump shows no
usable token), bounded, and per replica: a server that restarts asks its
admin to log in again.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.web import resource, server

from wire.server.auth import AuthError, Caller, Forbidden, acting_as, utc
from wire.server.store import StoreError
from wire.web import ApiError, JsonResource, read_json_body

LINK_LIFETIME = 600.0
SESSION_LIFETIME = 8 * 3600.0
# Outstanding links and open sessions at most (the oldest go first).
MAX_LINKS = 100
MAX_SESSIONS = 1000
# __Host-: only this origin may set it (Secure, Path=/, no Domain), so no
# sibling domain can plant a session of its own.
COOKIE = "__Host-wire_session"
MAX_COOKIE_HEADER = 4096
CSRF_HEADER = b"x-csrf-token"
UI_DIR = os.path.join(os.path.dirname(__file__), "ui")
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
# What each asset is served as; nothing else under /ui/static/ exists.
ASSETS = {
    "app.js": b"text/javascript; charset=utf-8",
    "login.js": b"text/javascript; charset=utf-8",
    "topology.js": b"text/javascript; charset=utf-8",
    "app.css": b"text/css; charset=utf-8",
}


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass
class Session:
    session_id: str  # short, for the audit log; not the secret
    csrf: str
    expires: float

    @property
    def actor(self) -> str:
        return f"dashboard:{self.session_id}"


class DashboardSessions:
    """Login links and sessions, by the hash of their secret."""

    def __init__(self, clock: IReactorTime):
        self._clock = clock
        self._links: dict[str, float] = {}
        self._sessions: dict[str, Session] = {}

    def make_link(self) -> tuple[str, float]:
        """A new one-time login token, and when it expires."""
        now = self._clock.seconds()
        self._prune(now)
        while len(self._links) >= MAX_LINKS:
            self._links.pop(min(self._links, key=self._links.__getitem__))
        token = secrets.token_urlsafe(32)
        expires = now + LINK_LIFETIME
        self._links[_digest(token)] = expires
        return token, expires

    def redeem(self, token: str) -> tuple[str, Session] | None:
        """A session for a valid, unused link (which is used up): its cookie value and the session."""
        now = self._clock.seconds()
        expires = self._links.pop(_digest(token), None)
        if expires is None or expires <= now:
            return None
        self._prune(now)
        while len(self._sessions) >= MAX_SESSIONS:
            self._sessions.pop(min(self._sessions, key=lambda k: self._sessions[k].expires))
        secret = secrets.token_urlsafe(32)
        session = Session(secrets.token_hex(4), secrets.token_urlsafe(24), now + SESSION_LIFETIME)
        self._sessions[_digest(secret)] = session
        return secret, session

    def session_of(self, request: server.Request) -> Session | None:
        """The request's live session, from its cookie (None: none, expired or unknown)."""
        secret = _cookie(request)
        if secret is None:
            return None
        session = self._sessions.get(_digest(secret))
        if session is None:
            return None
        if session.expires <= self._clock.seconds():
            del self._sessions[_digest(secret)]
            return None
        return session

    def end(self, request: server.Request) -> bool:
        secret = _cookie(request)
        return secret is not None and self.end_secret(secret)

    def end_secret(self, secret: str) -> bool:
        return self._sessions.pop(_digest(secret), None) is not None

    def caller_of(self, request: server.Request) -> Caller | None:
        """The admin API's caller for a request with a session cookie (None: it
        has none); a changing request must carry the session's CSRF token."""
        if _cookie(request) is None:
            return None
        session = self.session_of(request)
        if session is None:
            raise AuthError("the dashboard session expired or ended: log in again (wire admin dashboard)")
        if request.method not in (b"GET", b"HEAD") and not self.csrf_ok(session, request):
            raise Forbidden("missing or wrong X-CSRF-Token: changes come only from the dashboard's own page")
        return Caller(session.actor, read_only=False)

    @staticmethod
    def csrf_ok(session: Session, request: server.Request) -> bool:
        given = request.getHeader(CSRF_HEADER) or b""
        return hmac.compare_digest(given, session.csrf.encode())

    def _prune(self, now: float) -> None:
        self._links = {h: e for h, e in self._links.items() if e > now}
        self._sessions = {h: s for h, s in self._sessions.items() if s.expires > now}


def _cookie(request: server.Request) -> str | None:
    """The session cookie's value, split by hand: the standard library's parser
    is slow on crafted headers (CVE-2024-7592 before 3.11.10) and gives up at
    the first cookie it dislikes (another site's JSON value hides ours)."""
    raw = request.getHeader(b"cookie")
    if not raw or len(raw) > MAX_COOKIE_HEADER:
        return None
    header = raw.decode("latin-1")
    found: str | None = None
    for part in header.split(";"):
        name, _, value = part.strip().partition("=")
        if name == COOKIE and value:
            if found is not None and found != value:
                return None  # two sessions (one planted beside ours): neither is trusted
            found = value
    return found


def _over_https(request: server.Request) -> bool:
    """HTTPS here, or at a proxy in front that says so (a spoofed header
    only spoils the spoofer's own login)."""
    return bool(request.isSecure()) or (request.getHeader(b"x-forwarded-proto") or b"").lower() == b"https"


def secure_headers(request: server.Request, page: bool = True) -> None:
    request.setHeader(b"content-security-policy", CSP.encode())
    request.setHeader(b"x-content-type-options", b"nosniff")
    request.setHeader(b"referrer-policy", b"no-referrer")
    request.setHeader(b"x-frame-options", b"DENY")
    if page:
        request.setHeader(b"cache-control", b"no-store")


def _asset(name: str) -> bytes:
    with open(os.path.join(UI_DIR, name), "rb") as f:
        return f.read()


class Page(resource.Resource):
    """``/ui/``: the dashboard for a session, else the login page."""

    isLeaf = True

    def __init__(self, sessions: DashboardSessions):
        super().__init__()
        self._sessions = sessions

    def render_GET(self, request: server.Request) -> bytes:
        secure_headers(request)
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        session = self._sessions.session_of(request)
        if session is None:
            return _asset("login.html")
        # The CSRF token in the page: only a page of this origin can read it.
        return _asset("index.html").replace(b"{{csrf}}", session.csrf.encode())


class Static(resource.Resource):
    """``/ui/static/NAME``: the assets, and nothing else."""

    def getChild(self, path: bytes, request: server.Request) -> resource.Resource:
        name = path.decode("latin-1")
        kind = ASSETS.get(name)
        if kind is None or request.postpath:
            return resource.NoResource()
        return _AssetFile(name, kind)


class _AssetFile(resource.Resource):
    isLeaf = True

    def __init__(self, name: str, kind: bytes):
        super().__init__()
        self._name, self._kind = name, kind

    def render_GET(self, request: server.Request) -> bytes:
        secure_headers(request, page=False)
        request.setHeader(b"content-type", self._kind)
        request.setHeader(b"cache-control", b"no-cache")
        return _asset(self._name)


class SessionResource(JsonResource):
    """``POST /ui/session`` ``{"token"}``: a login link's token for a session
    cookie; ``DELETE /ui/session`` (with the CSRF token): log out. Both are
    audited (``note``: an audit entry, wire.server.admin.Admin.note)."""

    methods = ("POST", "DELETE")

    def __init__(self, sessions: DashboardSessions, note: Callable[[str, str], Awaitable[None]]):
        super().__init__()
        self._sessions = sessions
        self._note = note

    async def post(self, request: server.Request) -> dict[str, Any]:
        secure_headers(request)
        if not _over_https(request):
            # Browsers drop a Secure cookie an http:// page sets: the link would be spent for nothing.
            raise ApiError(400, "the dashboard needs HTTPS: open the link at the server's https:// address")
        if (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower() != b"application/json":
            # Only a page of this origin can send JSON here (another site's form cannot).
            raise ApiError(415, "expected Content-Type: application/json")
        body = read_json_body(request)
        token = body.get("token")
        if not isinstance(token, str) or not 20 <= len(token) <= 100:
            raise ApiError(400, "token: expected the token of a login link from 'wire admin dashboard'")
        redeemed = self._sessions.redeem(token)
        if redeemed is None:
            raise ApiError(403, "this login link is not valid: used already, expired, or mistyped; run 'wire admin dashboard' again")
        secret, session = redeemed
        try:
            with acting_as(session.actor):
                await self._note("dashboard.login", f"session {session.session_id}, until {utc(session.expires)}")
        except StoreError as e:
            self._sessions.end_secret(secret)
            raise ApiError(503, f"the login could not be recorded ({e}); try a new link in a moment")
        request.addCookie(
            COOKIE, secret, path="/", secure=True, httpOnly=True, sameSite="strict", max_age=str(int(SESSION_LIFETIME))
        )
        return {"ok": True, "expires": session.expires}

    async def delete(self, request: server.Request) -> dict[str, Any]:
        secure_headers(request)
        session = self._sessions.session_of(request)
        if session is None:
            raise ApiError(401, "no dashboard session")
        if not self._sessions.csrf_ok(session, request):
            raise ApiError(403, "missing or wrong X-CSRF-Token")
        self._sessions.end(request)
        request.addCookie(COOKIE, "", path="/", secure=True, httpOnly=True, sameSite="strict", max_age="0")
        try:
            with acting_as(session.actor):
                await self._note("dashboard.logout", f"session {session.session_id}")
        except StoreError:
            pass  # the session is over either way; the server's log has the failed write
        return {"ok": True}


class Login(resource.Resource):
    """``/ui/login``: the login page (its script reads the token from the fragment)."""

    isLeaf = True

    def render_GET(self, request: server.Request) -> bytes:
        secure_headers(request)
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        return _asset("login.html")


def dashboard(sessions: DashboardSessions, note: Callable[[str, str], Awaitable[None]]) -> resource.Resource:
    """The ``/ui`` tree; ``note`` writes an audit entry."""
    ui = _Tree()
    ui.putChild(b"", Page(sessions))
    ui.putChild(b"static", Static())
    ui.putChild(b"session", SessionResource(sessions, note))
    ui.putChild(b"login", Login())
    return ui


class _Tree(resource.Resource):
    """``/ui`` itself redirects to ``/ui/``; unknown children are 404."""

    def render_GET(self, request: server.Request) -> bytes:
        secure_headers(request)
        request.redirect(b"/ui/")
        return b""


def login_url(public_url: str, token: str) -> str:
    return f"{public_url.rstrip('/')}/ui/login#{token}"
