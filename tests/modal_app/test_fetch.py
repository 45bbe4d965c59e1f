"""ref_audio_url is fetched on a caller's behalf: every refusal the SSRF rules promise, proven against a real
HTTP server on 127.0.0.1 (allowed only where a test enables the allow-list for it)."""

from __future__ import annotations

import time

import pytest

from utter_tts.compat.fetch import FetchError, FetchPolicy, fetch_url

from .conftest import Served

STRICT = FetchPolicy(allow_networks=(), timeout_s=3.0)


@pytest.fixture(scope="module")
def server(ref_wav):
    routes = {"/ref.wav": (200, {"Content-Type": "audio/wav"}, ref_wav)}
    s = Served(routes)
    port = s.port
    routes.update(
        {
            "/big": (200, {}, b"x" * 5000),
            "/big-chunked": (200, {"Transfer-Encoding": "chunked"}, b"x" * 200_000),
            "/to-ref": (302, {"Location": "/ref.wav"}, b""),
            "/to-loopback2": (302, {"Location": f"http://127.0.0.2:{port}/ref.wav"}, b""),
            "/to-metadata": (302, {"Location": "http://169.254.169.254/latest/meta-data/"}, b""),
            "/to-private": (301, {"Location": "http://10.0.0.7/ref.wav"}, b""),
            "/to-file": (302, {"Location": "file:///etc/passwd"}, b""),
            "/loop": (302, {"Location": "/loop"}, b""),
            "/missing": (404, {}, b"nope"),
        }
    )
    yield s
    s.close()


def allow_loopback(**kw) -> FetchPolicy:
    return FetchPolicy(allow_networks=("127.0.0.1/32",), **{"timeout_s": 3.0, **kw})


def test_allowed_fetch_and_relative_redirect(server, ref_wav):
    assert fetch_url(f"{server.url}/ref.wav", allow_loopback()) == ref_wav
    assert fetch_url(f"{server.url}/to-ref", allow_loopback()) == ref_wav


def test_connects_to_the_checked_address_with_the_name_as_host(server, ref_wav):
    """A name is resolved once; the connection goes to that (checked) address, Host carries the name."""
    seen = []

    def resolver(host, port):
        seen.append(host)
        return ["127.0.0.1"]

    policy = allow_loopback(resolver=resolver)
    assert fetch_url(f"http://audio.test:{server.port}/ref.wav", policy) == ref_wav
    assert seen == ["audio.test"]


@pytest.mark.parametrize(
    "url, why",
    [
        ("ftp://example.com/a.wav", "must be an http or https URL"),
        ("file:///etc/passwd", "must be an http or https URL"),
        ("gopher://127.0.0.1/", "must be an http or https URL"),
        ("http://user:pw@example.com/a.wav", "must not contain credentials"),
        ("http:///a.wav", "has no host"),
        ("http://127.0.0.1/a.wav", "loopback"),
        ("http://localhost/a.wav", "loopback"),
        ("http://[::1]/a.wav", "loopback"),
        ("http://[::ffff:127.0.0.1]/a.wav", "loopback"),
        ("http://10.1.2.3/a.wav", "private"),
        ("http://172.16.0.1/a.wav", "private"),
        ("http://192.168.1.10/a.wav", "private"),
        ("http://[fc00::1]/a.wav", "private"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://[fe80::1]/a.wav", "link-local"),
        ("http://224.0.0.1/a.wav", "multicast"),
        ("http://[ff02::1]/a.wav", "multicast"),
        ("http://240.0.0.1/a.wav", "reserved"),
        ("http://0.0.0.0/a.wav", "unspecified"),
        ("http://100.64.0.1/a.wav", "shared"),
    ],
)
def test_refused_targets(url, why):
    with pytest.raises(FetchError, match=why):
        fetch_url(url, STRICT)


def test_loopback_refused_without_the_allow_list_and_nothing_is_sent(server):
    before = len(server.hits)
    with pytest.raises(FetchError, match="loopback"):
        fetch_url(f"{server.url}/ref.wav", STRICT)
    assert len(server.hits) == before  # refused before connecting


def test_name_resolving_to_a_private_address_is_refused():
    """The check is on the resolved addresses: a public-looking name pointing inside is refused, and so is
    a name with one public and one private address."""
    for answer in (["10.0.0.5"], ["93.184.216.34", "192.168.0.2"], ["::1"]):
        policy = FetchPolicy(allow_networks=(), resolver=lambda h, p, a=answer: a)
        with pytest.raises(FetchError, match="refused"):
            fetch_url("https://innocent.example/voice.wav", policy)


def test_allow_list_is_exact(server):
    """Allowing 127.0.0.1 does not allow other loopback or private addresses."""
    with pytest.raises(FetchError, match="loopback"):
        fetch_url(f"http://127.0.0.2:{server.port}/ref.wav", allow_loopback())


@pytest.mark.parametrize(
    "path, why",
    [
        ("/to-loopback2", "loopback"),
        ("/to-metadata", "link-local"),
        ("/to-private", "private"),
        ("/to-file", "must be an http or https URL"),
    ],
)
def test_redirects_are_checked_again(server, path, why):
    with pytest.raises(FetchError, match=why):
        fetch_url(f"{server.url}{path}", allow_loopback())


def test_redirect_limit(server):
    with pytest.raises(FetchError, match="redirected more than 3 times"):
        fetch_url(f"{server.url}/loop", allow_loopback())


def test_size_bound_by_content_length_and_while_reading(server):
    with pytest.raises(FetchError, match="larger than 1000 bytes"):
        fetch_url(f"{server.url}/big", allow_loopback(max_bytes=1000))
    with pytest.raises(FetchError, match="larger than 100000 bytes"):
        fetch_url(f"{server.url}/big-chunked", allow_loopback(max_bytes=100_000))


def test_time_bound(server):
    started = time.monotonic()
    with pytest.raises(FetchError, match="timed out"):
        fetch_url(f"{server.url}/slow", allow_loopback(timeout_s=1.0))
    assert time.monotonic() - started < 3.0


def test_http_errors(server):
    with pytest.raises(FetchError, match="HTTP 404"):
        fetch_url(f"{server.url}/missing", allow_loopback())


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory, ref_wav):
    """A real HTTPS server on 127.0.0.1 whose certificate names only `audio.test`."""
    import shutil
    import ssl
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("openssl not installed")
    d = tmp_path_factory.mktemp("tls")
    subject = ["-subj", "/CN=audio.test", "-addext", "subjectAltName=DNS:audio.test"]
    files = ["-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem")]
    base = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"]
    subprocess.run(base + subject + files, check=True, capture_output=True)
    s = Served({"/ref.wav": (200, {}, ref_wav)})
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(d / "cert.pem", d / "key.pem")
    s.httpd.socket = ctx.wrap_socket(s.httpd.socket, server_side=True)
    s.ca = str(d / "cert.pem")
    yield s
    s.close()


def test_https_keeps_hostname_verification_while_pinned(tls_server, ref_wav):
    """The connection goes to the checked IP, yet TLS still verifies the certificate against the URL's name
    (SNI and hostname check use the name): the right name works, a name the certificate lacks fails."""
    import ssl

    import httpx

    ctx = ssl.create_default_context(cafile=tls_server.ca)
    policy = allow_loopback(resolver=lambda host, port: ["127.0.0.1"])
    url = f"https://audio.test:{tls_server.port}/ref.wav"
    assert fetch_url(url, policy, transport=httpx.HTTPTransport(verify=ctx)) == ref_wav
    with pytest.raises(FetchError, match="could not fetch"):
        fetch_url(url.replace("audio.test", "other.test"), policy, transport=httpx.HTTPTransport(verify=ctx))
