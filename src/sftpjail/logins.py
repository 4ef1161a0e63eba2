"""Login decisions: judge a worker's credential, grant or refuse, score failures.

Theory of operation
-------------------
A worker asks (`ipc.AuthRequest`) whether a user name and a password or
public key are good; only the supervisor holds the users, so only it can
answer.  The judgement runs in a fixed order: the credential first, so
that only someone who holds a good one learns (from nothing but timing)
that the account exists; then whether the account may log in now and from
that address (`users.login_refusal`); then whether its home can be
prepared.  Every refusal gets the same reply as a wrong password; the
reason goes to the audit log only.

A grant is not a login yet: the worker confirms (`ipc.LoginNotice`) once
its SSH layer has completed the login, and only a granted user can be
confirmed.  A key is granted twice per login (offered, then signed), so
logins are counted at the confirmation.

Failures are paid for here, whatever the worker does:

* a password failure is answered only after a delay that doubles with
  each failure of the connection;
* the defence scores each password failure at once, and a refused key
  only when the connection closes without a login, because offering
  several keys in turn is what clients normally do;
* at `max_auth_attempts`, or once the address is banned, the refusal
  tells the worker to disconnect.

While the user database of a replica is away, every login is refused and
nothing is scored: the client is not to blame for an outage.
"""

from __future__ import annotations

import logging
import os
import pwd
import time
from pathlib import Path

from sftpjail import ipc
from sftpjail.audit import audit
from sftpjail.config import Config, Limits
from sftpjail.defense import Ban, Defense
from sftpjail.errors import ConfigError, HomeError
from sftpjail.homes import ensure_home
from sftpjail.metrics import Metrics
from sftpjail.passwords import equalize_timing, verify_password
from sftpjail.quota import QuotaLedger, QuotaLimits
from sftpjail.reload import LiveUsers
from sftpjail.sessions import Session, Sessions
from sftpjail.timers import Timers
from sftpjail.users import User, login_refusal

logger = logging.getLogger("sftpjail.supervisor")

_MAX_FAILURE_DELAY = 8.0
# The audit reason of a login refused while the shared store is away.
DATABASE_UNREACHABLE = "user database unreachable"
# ... and of a good login whose home cannot be prepared (replaced by a link).
HOME_UNAVAILABLE = "home unavailable"


class Logins:
    """Answers every worker's login questions and makes failures cost."""

    def __init__(
        self,
        config: Config,
        users: LiveUsers,
        sessions: Sessions,
        defense: Defense,
        metrics: Metrics,
        quotas: QuotaLedger,
        timers: Timers,
    ) -> None:
        self.config = config
        self.users = users
        self.sessions = sessions
        self.defense = defense
        self.metrics = metrics
        self.quotas = quotas
        self.timers = timers
        # Who owns the homes prepared at login; set at startup (`home_owner`).
        self.home_owner: tuple[int, int] | None = None

    def authenticate(self, session: Session, request: ipc.AuthRequest) -> None:
        """Answer an `auth` request: a grant at once, a refusal after a delay."""

        limits = self.config.limits
        if session.pending_reply or session.user is not None:
            raise ipc.ProtocolError("authentication request out of turn")
        if session.failures >= limits.max_auth_attempts:
            raise ipc.ProtocolError("authentication attempts after the limit")

        user, reason = self._judge(session, request)
        if reason is None and user is not None:
            home = self._prepare_home(request, user)
            if home is not None:
                session.granted[user.name] = (user, request.method)
                self.sessions.answer_login(session, grant_reply(home, user))
                return
            reason = HOME_UNAVAILABLE

        self._refuse(session, request, reason)

    def confirm(self, session: Session, user_name: str) -> None:
        """Take a worker's word that a granted login has completed."""

        grant = session.granted.get(user_name)
        if grant is None or session.user is not None:
            raise ipc.ProtocolError(f"login as {user_name!r} was never granted")
        user, method = grant
        session.user = user_name
        session.logged_in_at = time.time()
        # Idle time counts from the login, not from the connection.
        session.last_active = time.monotonic()

        # Counted here, not per grant: a key is granted twice per login
        # (once when offered, once when signed).
        self.metrics.authentication(method, accepted=True)
        self._open_quota(session, user)
        audit(
            "auth.success",
            connection=session.connection_id,
            user=user_name,
            method=method,
            peer=session.peer_host,
        )
        logger.info(
            "User %s logged in from %s (connection %d).",
            user_name,
            session.peer_host,
            session.connection_id,
        )

        # The users file may have changed between the grant and now.
        self.sessions.end_if_refused(session, self.users.users)

    def score_refused_keys(self, session: Session, reason: str) -> None:
        """Score a connection that closed after refused keys and no login.

        Called as the session is forgotten; keys count once per connection,
        and not at all if its passwords were already scored.
        """

        if (
            reason == "closed"
            and session.user is None
            and session.key_failure_user is not None
            and not session.password_failures
        ):
            ban = self.defense.record_failure(
                session.peer_host, session.key_failure_user
            )
            if ban is not None:
                self._on_ban(ban, None)

    def _judge(
        self, session: Session, request: ipc.AuthRequest
    ) -> tuple[User | None, str | None]:
        """The user asked for, and why the login fails (None if it does not)."""

        if self.users.unreachable:
            logger.warning(
                "Refused the login of %s from %s: the user database is unreachable.",
                request.user,
                session.peer_host,
            )
            return None, DATABASE_UNREACHABLE
        user = self.users.users.get(request.user)
        return user, refusal_reason(user, request, session.peer_host)

    def _prepare_home(self, request: ipc.AuthRequest, user: User) -> Path | None:
        """The user's home, made if missing; None if it cannot be used."""

        try:
            return ensure_home(self.config.data_dir, user.home, self.home_owner)
        except (HomeError, OSError) as error:
            # A home replaced by a link or a file (by another user whose
            # home contains it, or by hand) refuses this login only.
            logger.error("Refused the login of %s: %s", request.user, error)
            return None

    def _refuse(
        self, session: Session, request: ipc.AuthRequest, reason: str | None
    ) -> None:
        """Count, log and score a failure; answer once its delay has passed."""

        limits = self.config.limits
        session.failures += 1
        self.metrics.authentication(request.method, accepted=False)
        _log_failure(session, request, reason)

        # The client is not to blame for the server's faults (a database
        # outage, a broken home): nothing is scored.
        ban = None
        if reason not in (DATABASE_UNREACHABLE, HOME_UNAVAILABLE):
            ban = self._score_failure(session, request)
        exhausted = session.failures >= limits.max_auth_attempts or ban is not None

        reply = refusal_reply(disconnect=exhausted)
        delay = failure_delay(request.method, session.failures, limits)
        session.pending_reply = True
        self.timers.schedule(delay, lambda: self.sessions.answer_login(session, reply))

    def _score_failure(self, session: Session, request: ipc.AuthRequest) -> Ban | None:
        """Tell the defence about a password failure; remember a key's."""

        if request.method != "password":
            session.key_failure_user = request.user
            return None
        session.password_failures += 1
        ban = self.defense.record_failure(session.peer_host, request.user)
        if ban is not None:
            self._on_ban(ban, session)
        return ban

    def _on_ban(self, ban: Ban, current: Session | None) -> None:
        """Count the ban and drop the address's other unauthenticated tries."""

        self.metrics.bans.inc()
        for other in self.sessions.from_source(ban.source):
            if other is not current and other.user is None:
                self.sessions.kill(other, "banned")

    def _open_quota(self, session: Session, user: User) -> None:
        """Start the user's books, measuring the home if no session has them."""

        limits = QuotaLimits(user.quota_bytes, user.quota_files)
        home = Path(os.path.abspath(self.config.data_dir)) / user.home
        self.quotas.join(session.connection_id, user.name, limits, home)


def refusal_reason(
    user: User | None, request: ipc.AuthRequest, peer_host: str
) -> str | None:
    """Why this login fails, for the audit log only; None if it succeeds.

    The credential is judged first, so only someone who holds a good one
    learns (from nothing but timing) that the account exists; every
    refusal then gets the same reply as a wrong password.
    """

    if user is None:
        _check_credential(user, request)
        return "unknown user"
    if not _check_credential(user, request):
        return "wrong password" if request.method == "password" else "unknown key"
    return login_refusal(user, peer_host)


def _check_credential(user: User | None, request: ipc.AuthRequest) -> bool:
    if request.method == "password":
        if user is None or user.password_hash is None:
            equalize_timing(request.credential)
            return False
        return verify_password(user.password_hash, request.credential)
    if user is None:
        return False
    offered = _key_identity(request.credential)
    return any(_key_identity(line) == offered for line in user.authorized_keys)


def _key_identity(line: str) -> tuple[str, str]:
    """The algorithm and key blob of an OpenSSH public key line."""

    parts = line.split()
    return (parts[0], parts[1]) if len(parts) >= 2 else ("", "")


def failure_delay(method: str, failures: int, limits: Limits) -> float:
    """How long a refusal waits after the connection's `failures`-th failure.

    Only password guesses are slowed down: a client offering several keys
    in turn is normal, and a key cannot be guessed.
    """

    if method != "password":
        return 0.0
    growth = 2.0 ** (failures - 1)
    return min(limits.auth_failure_delay * growth, _MAX_FAILURE_DELAY)


def grant_reply(home: Path, user: User) -> dict[str, object]:
    """The `auth_reply` that lets `user` in: where they live, what they may do."""

    return {
        "type": "auth_reply",
        "ok": True,
        "home": str(home),
        "read_only": user.read_only,
        "permissions": {
            directory: sorted(names) for directory, names in user.permissions.items()
        },
        "quota_bytes": user.quota_bytes,
        "quota_files": user.quota_files,
        "disconnect": False,
    }


def refusal_reply(*, disconnect: bool) -> dict[str, object]:
    """The `auth_reply` of every refusal, whatever its reason."""

    return {
        "type": "auth_reply",
        "ok": False,
        "home": None,
        "read_only": False,
        "disconnect": disconnect,
    }


def home_owner(config: Config) -> tuple[int, int] | None:
    """Who should own homes: the service user when running as root."""

    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(config.service_user)
    except KeyError:
        raise ConfigError(
            f"service_user {config.service_user!r} does not exist; create it "
            f"(useradd --system {config.service_user}) or set server.service_user"
        ) from None
    return entry.pw_uid, entry.pw_gid


def _log_failure(
    session: Session, request: ipc.AuthRequest, reason: str | None
) -> None:
    audit(
        "auth.failure",
        connection=session.connection_id,
        user=request.user,
        method=request.method,
        peer=session.peer_host,
        attempt=session.failures,
        reason=reason,
    )
    logger.warning(
        "Failed %s login for %s from %s.",
        request.method,
        request.user,
        session.peer_host,
    )
