"""What every firewall backend offers, and how the CLI picks one."""

from __future__ import annotations

from typing import Protocol

from sftpjail.firewall.iptables import IptablesBackend
from sftpjail.firewall.nftables import NftablesBackend
from sftpjail.firewall.spec import FirewallSpec

BACKENDS = ("nftables", "iptables")


class Backend(Protocol):
    """Renders, applies, removes and checks the rules for one spec."""

    name: str

    def render(self, spec: FirewallSpec) -> str:
        """Return the rules as text an operator can read or load by hand."""

    def apply(self, spec: FirewallSpec) -> list[str]:
        """Install the rules idempotently; return notes for the operator."""

    def remove(self) -> list[str]:
        """Take away everything apply added; return notes for the operator."""

    def check(self, spec: FirewallSpec) -> list[str]:
        """Return every difference between the live and rendered rules."""


def make_backend(name: str, iptables_program: str = "iptables") -> Backend:
    """Return the backend called `name` ("nftables" or "iptables")."""

    if name == "nftables":
        return NftablesBackend()
    return IptablesBackend(iptables_program)
