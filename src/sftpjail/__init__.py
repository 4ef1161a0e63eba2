"""sftpjail: an SFTP-only server that jails each user with the kernel."""

__version__ = "0.1.0"

__all__ = ["__version__"]
