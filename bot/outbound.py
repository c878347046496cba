"""Which addresses the bot may fetch from: public ones, checked on the address actually connected to.

An owner's download URL, a Civitai `downloadUrl` and every redirect hop could point inside the
machine or its network (127.0.0.1, 169.254.169.254, 10.0.0.1, a decimal `2130706433`, a name that
resolves to one of those). Checking the URL's text is not enough: names resolve, and resolve again
(DNS rebinding). So the check lives in the connection itself: an httpcore network backend that
resolves the host once, refuses if any address it resolves to is not a public unicast address, and
connects to exactly the address it checked. Every connection goes through it, redirect hops and
reconnects included. TLS still verifies the certificate against the host name in the URL.

An owner may allow named hosts (`EASEL_DOWNLOAD_ALLOW_HOSTS`), e.g. a model server on their LAN.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import httpcore
import httpx

from common.errors import EaselError

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Awaitable[list[str]]]


class AddressRefused(EaselError):
    """A connection was refused because of where it would go; the message names the rule."""


def refusal(address: Address) -> str | None:
    """Why `address` may not be fetched from, or None if it is a public unicast address."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour or (address.teredo[1] if address.teredo else None)
        if embedded is not None:
            return refusal(embedded)
        if address in ipaddress.IPv6Network("64:ff9b::/96"):  # NAT64: the last 32 bits are an IPv4 address
            return refusal(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    for rule, applies in (
        ("unspecified", address.is_unspecified),
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("reserved", address.is_reserved),
        ("private", address.is_private),
    ):
        if applies:
            return f"a {rule} address"
    return None if address.is_global else "not a public address"


async def system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


@dataclass
class Policy:
    """Hosts allowed whatever they resolve to (lower-case names or address literals), and the resolver."""

    allowed_hosts: frozenset[str] = frozenset()
    resolve: Resolver = system_resolver

    async def addresses(self, host: str, port: int) -> list[str]:
        """The addresses to connect to for `host`, all checked; AddressRefused names the rule."""
        name = host.strip("[]").lower().rstrip(".")
        try:
            found = await self.resolve(name, port)
        except (OSError, UnicodeError) as e:
            raise AddressRefused(f"{name} could not be resolved ({e})") from None
        if not found:
            raise AddressRefused(f"{name} resolves to no address")
        if name in self.allowed_hosts:
            return found
        for text in found:
            address = ipaddress.ip_address(text.split("%", 1)[0])  # drop an IPv6 zone
            why = refusal(address)
            if why is not None:
                shown = name if name == str(address) else f"{name} ({address})"
                raise AddressRefused(
                    f"{shown} is {why}; downloads only go to public addresses "
                    "(an owner may allow a host with EASEL_DOWNLOAD_ALLOW_HOSTS)"
                )
        return found


@dataclass
class GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's default backend, except that every TCP connection is checked by the policy first."""

    policy: Policy
    inner: httpcore.AsyncNetworkBackend = field(default_factory=httpcore.AnyIOBackend)

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await self.policy.addresses(host, port)
        last: Exception | None = None
        for address in addresses:  # the checked address itself, never the name again
            try:
                return await self.inner.connect_tcp(address, port, timeout, local_address, socket_options)
            except httpcore.ConnectError as e:
                last = e
        assert last is not None
        raise last

    async def connect_unix_socket(self, *args: Any, **kwargs: Any) -> httpcore.AsyncNetworkStream:
        raise AddressRefused("connections to local sockets are not allowed")

    async def sleep(self, seconds: float) -> None:
        await self.inner.sleep(seconds)


class GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport over a GuardedBackend (no proxies from the environment: they would connect for us)."""

    def __init__(self, policy: Policy) -> None:
        super().__init__(trust_env=False)
        # httpx (0.28) builds its httpcore pool in __init__ without a way to pass a network backend;
        # the same pool, with ours, replaces it.
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False),
            max_connections=100,
            max_keepalive_connections=20,
            keepalive_expiry=5.0,
            network_backend=GuardedBackend(policy),
        )


def client(policy: Policy, *, transport: httpx.AsyncBaseTransport | None = None, **kwargs: Any) -> httpx.AsyncClient:
    """An AsyncClient whose every connection obeys `policy` (tests may hand in their own transport)."""
    return httpx.AsyncClient(transport=transport or GuardedTransport(policy), trust_env=False, **kwargs)
