"""Fetch `ref_audio_url` safely: a server-side request made on a caller's behalf (SSRF-hardened).

- http and https only; the URL may carry no credentials;
- the host is resolved once and EVERY address it resolves to must be public (not loopback, private,
  link-local, multicast, reserved, unspecified, shared/CGNAT, or an IPv4-mapped form of those) unless it
  lies in `FetchPolicy.allow_networks`; the connection then goes to the checked address (no second DNS
  lookup that a rebinding attacker could answer differently), with Host and TLS SNI set to the name;
- redirects are followed by hand, at most `max_redirects`, each target checked the same way;
- the body is bounded by `max_bytes` (Content-Length checked first, then while reading) and the whole
  fetch by `timeout_s`.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit, urlunsplit

import httpx

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], Sequence[str]]

_SHARED = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT: not "private" to ipaddress, not public


class FetchError(ValueError):
    """The URL was refused or could not be fetched; the message is safe to show the caller."""


def system_resolver(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(info[4][0] for info in infos))


def _networks_from_env() -> tuple[str, ...]:
    raw = os.environ.get("UTTER_TTS_FETCH_ALLOW", "")
    return tuple(x.strip() for x in raw.split(",") if x.strip())


@dataclass(frozen=True)
class FetchPolicy:
    """Limits of one fetch. `allow_networks` (CIDRs, e.g. "10.1.0.0/16") lets non-public targets through;
    it is empty by default and meant for deployments that fetch from their own network, and for tests."""

    max_bytes: int = 10 * 1024 * 1024
    timeout_s: float = 10.0
    max_redirects: int = 3
    allow_networks: tuple[str, ...] = field(default_factory=_networks_from_env)
    resolver: Resolver = system_resolver
    user_agent: str = "utter-tts-compat/1 (+ref_audio_url)"

    def allowed(self, addr: Address) -> bool:
        return any(addr in ipaddress.ip_network(n, strict=False) for n in self.allow_networks)


def forbidden_reason(addr: Address) -> str | None:
    """Why an address must not be fetched from, or None for a public one."""
    if isinstance(addr, ipaddress.IPv6Address):
        mapped = addr.ipv4_mapped or addr.sixtofour
        if mapped is not None:
            return forbidden_reason(mapped)
        if addr.teredo is not None:
            return "a Teredo tunnel address"
    checks = [
        ("is_unspecified", "an unspecified address"),
        ("is_loopback", "a loopback address"),
        ("is_link_local", "a link-local address"),
        ("is_multicast", "a multicast address"),
        ("is_reserved", "a reserved address"),
        ("is_private", "a private address"),
    ]
    if isinstance(addr, ipaddress.IPv4Address) and addr in _SHARED:
        return "a shared (carrier-grade NAT) address"
    for attr, why in checks:
        if getattr(addr, attr):
            return why
    if not addr.is_global:
        return "a non-public address"
    return None


def _check_target(url: str, policy: FetchPolicy) -> tuple[httpx.URL, str, Address]:
    """Validate one URL and resolve its host: (url, host, the address to connect to)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        raise FetchError("'ref_audio_url' is not a valid URL") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise FetchError("'ref_audio_url' must be an http or https URL")
    if parts.username is not None or parts.password is not None:
        raise FetchError("'ref_audio_url' must not contain credentials")
    host = parts.hostname
    if not host:
        raise FetchError("'ref_audio_url' has no host")
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError:
        raise FetchError("'ref_audio_url' has an invalid port") from None
    try:
        literal = ipaddress.ip_address(host)
        candidates = [str(literal)]
    except ValueError:
        try:
            candidates = list(policy.resolver(host, port))
        except (OSError, UnicodeError):
            raise FetchError(f"'ref_audio_url' host {host!r} could not be resolved") from None
    if not candidates:
        raise FetchError(f"'ref_audio_url' host {host!r} could not be resolved")
    addrs: list[Address] = []
    for c in candidates:
        addr = ipaddress.ip_address(c.split("%", 1)[0])
        why = forbidden_reason(addr)
        if why and not policy.allowed(addr):
            raise FetchError(f"'ref_audio_url' points to {why}; refused")
        addrs.append(addr)
    return httpx.URL(url), host, addrs[0]


def _pinned(url: httpx.URL, addr: Address) -> httpx.URL:
    """The same URL with its host replaced by the checked address."""
    host = f"[{addr}]" if isinstance(addr, ipaddress.IPv6Address) else str(addr)
    netloc = host if url.port is None else f"{host}:{url.port}"
    return httpx.URL(urlunsplit((url.scheme, netloc, url.raw_path.decode("ascii"), "", "")))


def fetch_url(
    url: str, policy: FetchPolicy | None = None, transport: httpx.BaseTransport | None = None
) -> bytes:
    """The body of `url` under `policy`; FetchError when refused, too large, too slow or not 2xx."""
    policy = policy or FetchPolicy()
    if not isinstance(url, str) or len(url) > 4096:
        raise FetchError("'ref_audio_url' must be a URL string")
    deadline = time.monotonic() + policy.timeout_s
    timeout = httpx.Timeout(policy.timeout_s)
    with httpx.Client(
        timeout=timeout, follow_redirects=False, transport=transport, trust_env=False
    ) as client:
        current = url
        for _ in range(policy.max_redirects + 1):
            target, host, addr = _check_target(current, policy)
            host_header = host if target.port is None else f"{host}:{target.port}"
            if ":" in host and not host.startswith("["):
                host_header = f"[{host}]" if target.port is None else f"[{host}]:{target.port}"
            request = client.build_request(
                "GET",
                _pinned(target, addr),
                headers={
                    "Host": host_header,
                    "User-Agent": policy.user_agent,
                    "Accept": "audio/*, */*",
                    "Accept-Encoding": "identity",
                },
                extensions={"sni_hostname": host} if target.scheme == "https" else {},
            )
            try:
                response = client.send(request, stream=True)
            except httpx.TimeoutException:
                raise FetchError("fetching 'ref_audio_url' timed out") from None
            except httpx.HTTPError as e:
                raise FetchError(f"could not fetch 'ref_audio_url': {type(e).__name__}") from None
            try:
                if response.is_redirect:
                    location = response.headers.get("location")
                    if not location:
                        raise FetchError("'ref_audio_url' redirected without a Location")
                    current = urljoin(str(target), location)
                    continue
                if not response.is_success:
                    raise FetchError(f"fetching 'ref_audio_url' failed with HTTP {response.status_code}")
                return _read_bounded(response, policy, deadline)
            finally:
                response.close()
        raise FetchError(f"'ref_audio_url' redirected more than {policy.max_redirects} times")


def _read_bounded(response: httpx.Response, policy: FetchPolicy, deadline: float) -> bytes:
    declared = response.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > policy.max_bytes:
        raise FetchError(f"'ref_audio_url' is larger than {policy.max_bytes} bytes")
    body = bytearray()
    try:
        for chunk in response.iter_raw():
            body += chunk
            if len(body) > policy.max_bytes:
                raise FetchError(f"'ref_audio_url' is larger than {policy.max_bytes} bytes")
            if time.monotonic() > deadline:
                raise FetchError("fetching 'ref_audio_url' timed out")
    except httpx.TimeoutException:
        raise FetchError("fetching 'ref_audio_url' timed out") from None
    except httpx.HTTPError as e:
        raise FetchError(f"could not fetch 'ref_audio_url': {type(e).__name__}") from None
    if time.monotonic() > deadline:
        raise FetchError("fetching 'ref_audio_url' timed out")
    return bytes(body)
