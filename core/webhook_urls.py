"""Where a webhook may be sent: the server-side request forgery (SSRF) guard.

A webhook URL makes diffq's servers send requests to an address a user chose. Left unchecked, a user
could aim them at what only those servers reach: the cloud's metadata service (credentials), the
database, an admin port on localhost. So a webhook URL must be http(s), and every address its host
resolves to must be public: not loopback, private, link-local, multicast, reserved or otherwise
special-purpose. `DIFFQ_WEBHOOK_ALLOW_PRIVATE=true` lifts that (receivers on a private network, tests
on loopback), except for the metadata addresses, which no webhook ever needs.

The check runs twice: when a job is submitted (a 422 that says why), and before every attempt,
because DNS can change between the two. The attempt then connects to the address that was checked
(`pinned_request`), not to whatever a second lookup would say, so a DNS answer that flips from a
public to a private address between the check and the connection (DNS rebinding) can't get through.
Redirects are never followed (a public receiver could otherwise redirect to a private address).
"""

import ipaddress
import socket
from typing import Any

import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

ALLOW_SETTING = "DIFFQ_WEBHOOK_ALLOW_PRIVATE=true"
# The instance metadata services of AWS (IPv4, IPv6 and the ECS task endpoint), GCP and Azure (the same
# link-local IPv4 address), and Alibaba Cloud. Refused even when private addresses are allowed.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(address)
    for address in ("169.254.169.254", "fd00:ec2::254", "169.254.170.2", "100.100.100.200")
)


class WebhookUrlRefused(ValueError):
    """A webhook URL diffq will not send to; the message says why and what allows it."""


def url_form_problem(url: str) -> str | None:
    """Why `url` can't be a webhook URL by its form alone (scheme, host, port); None if it can."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError) as error:
        return f"{url!r} is not a URL ({error})"
    if parsed.scheme not in ("http", "https"):
        return f"webhook URLs must start with http:// or https://, got {url!r}"
    if not parsed.host:
        return f"webhook URL {url!r} names no host"
    if parsed.port is not None and not 1 <= parsed.port <= 65535:
        return f"webhook URL {url!r} has port {parsed.port}; a port is from 1 to 65535 (or left out)"
    if parsed.userinfo:
        # It would be stored and shown with the job, and sent on every delivery.
        return (
            "webhook URLs may not hold credentials (user:password@); receivers check the "
            "webhook-signature header instead (see diffq keys webhook-secret)"
        )
    return None


NAT64 = ipaddress.ip_network("64:ff9b::/96")


def _embedded_ipv4(address: IPAddress) -> IPAddress:
    """The IPv4 address an IPv6 address carries (::ffff:a.b.c.d, 6to4, NAT64), which is where it leads."""
    if not isinstance(address, ipaddress.IPv6Address):
        return address
    if address in NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address.ipv4_mapped or address.sixtofour or address


def _special_kind(address: IPAddress) -> str | None:
    """What makes `address` not a public one ("loopback", "private", ...); None for a public address."""
    for kind in ("loopback", "link-local", "multicast", "unspecified", "reserved", "private"):
        if getattr(address, "is_" + kind.replace("-", "_")):
            return kind
    return None if address.is_global else "non-public"


def address_problem(host: str, address: IPAddress, allow_private: bool) -> str | None:
    """Why a webhook may not be sent to `address` (which `host` resolved to); None if it may."""
    target = _embedded_ipv4(address)
    if target in METADATA_ADDRESSES:
        return (
            f"webhook host {host} resolves to {address}, a cloud metadata address; webhooks are never "
            "sent there"
        )
    kind = _special_kind(target)
    if kind is None or allow_private:
        return None
    return (
        f"webhook host {host} resolves to {address}, {'an' if kind[0] in 'aeiou' else 'a'} {kind} address; "
        "webhooks are not sent to loopback, "
        "private, link-local, multicast or reserved addresses (SSRF protection) unless the server sets "
        f"{ALLOW_SETTING}"
    )


def resolve(url: str) -> list[IPAddress]:
    """The addresses the host of an http(s) `url` resolves to, in the resolver's order of preference.

    Raises `WebhookUrlRefused` when the URL is malformed or its host does not resolve.
    """
    if problem := url_form_problem(url):
        raise WebhookUrlRefused(problem)
    parsed = httpx.URL(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(parsed.host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError, ValueError) as error:
        raise WebhookUrlRefused(f"webhook host {parsed.host} does not resolve ({error})") from None
    addresses: list[IPAddress] = []
    for info in infos:
        # An IPv6 socket address may carry a zone ("fe80::1%eth0"): the address is before the '%'.
        address = ipaddress.ip_address(str(info[4][0]).split("%")[0])
        if address not in addresses:
            addresses.append(address)
    return addresses


def checked_addresses(url: str, allow_private: bool) -> list[IPAddress]:
    """The addresses of `url`'s host, once every one of them may receive webhooks.

    Raises `WebhookUrlRefused` (its message says why, and which setting allows it) otherwise. All of
    them are checked, not only the first: a client may connect to any.
    """
    addresses = resolve(url)
    host = httpx.URL(url).host
    for address in addresses:
        if problem := address_problem(host, address, allow_private):
            raise WebhookUrlRefused(problem)
    return addresses


def url_problem(url: str, allow_private: bool) -> str | None:
    """Why a webhook can't be sent to `url` now; None if it can. For checks at submission."""
    try:
        checked_addresses(url, allow_private)
    except WebhookUrlRefused as error:
        return str(error)
    return None


def pinned_request(url: str, address: IPAddress) -> tuple[httpx.URL, dict[str, str], dict[str, Any]]:
    """The URL, headers and httpx extensions that send a request for `url` to `address` itself.

    The URL names the address; the `Host` header and, for https, the TLS server name (SNI, also the
    name the certificate is checked against) keep the original host, so the receiver sees the request
    it expects.
    """
    original = httpx.URL(url)
    target = original.copy_with(host=str(address))
    extensions: dict[str, Any] = {"sni_hostname": original.host} if original.scheme == "https" else {}
    return target, {"host": original.netloc.decode("ascii")}, extensions
