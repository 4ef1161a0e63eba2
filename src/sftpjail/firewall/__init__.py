"""Host firewall rules that keep an sftpjail container off the Internet.

`FirewallSpec` says what to enforce; a backend (`NftablesBackend`,
`IptablesBackend`) renders it, applies it, removes it and checks it.
Rendering is pure; apply, remove and check run nft, iptables and
conntrack in the current network namespace.
"""

from sftpjail.firewall.backend import BACKENDS, Backend, make_backend
from sftpjail.firewall.iptables import IptablesBackend
from sftpjail.firewall.nftables import NftablesBackend
from sftpjail.firewall.spec import (
    AllowedDestination,
    FirewallSpec,
    parse_allowed,
    parse_network,
)

__all__ = [
    "BACKENDS",
    "AllowedDestination",
    "Backend",
    "FirewallSpec",
    "IptablesBackend",
    "NftablesBackend",
    "make_backend",
    "parse_allowed",
    "parse_network",
]
