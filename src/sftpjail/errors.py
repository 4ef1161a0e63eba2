"""Errors that reach the operator, each mapped onto one exit code.

Every message says what went wrong and what to do about it.  The CLI turns
an `SftpjailError` into one line on stderr and its `exit_code`; nothing
else is printed, so scripts can rely on the codes.
"""

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2


class SftpjailError(Exception):
    """Base class of every error sftpjail reports to the operator."""

    exit_code = EXIT_FAILURE


class ConfigError(SftpjailError):
    """The configuration file or an environment override is invalid."""

    exit_code = EXIT_USAGE


class UsersFileError(SftpjailError):
    """The users file cannot be read, parsed or validated."""

    exit_code = EXIT_USAGE


class UserExistsError(UsersFileError):
    """A user with this name is already in the users file."""


class UnknownUserError(UsersFileError):
    """No user with this name is in the users file."""


class HostKeyError(SftpjailError):
    """A host key cannot be created, read or trusted."""


class SandboxError(SftpjailError):
    """The kernel cannot enforce a sandbox layer the configuration requires."""


class FirewallError(SftpjailError):
    """Firewall rules cannot be rendered, applied, removed or checked."""


class HomeError(SftpjailError):
    """A user's home directory cannot be created or is not safe to use."""


class HealthCheckError(SftpjailError):
    """The server does not answer SSH on one of its listen addresses."""


class ProbeTargetError(SftpjailError):
    """A `sftpjail probe` target is not written in one of the known forms."""

    exit_code = EXIT_USAGE


class ControlSocketError(SftpjailError):
    """The running server cannot be reached or asked through its control socket."""


class DatabaseError(SftpjailError):
    """The PostgreSQL store is missing, not set up, or refused a change."""


class DatabaseUnavailableError(DatabaseError):
    """The PostgreSQL server cannot be reached right now."""
