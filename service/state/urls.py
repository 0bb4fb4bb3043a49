"""Redis URLs: which store a URL names, redis-py's options from it, and how it is shown.

One module for every place a Redis URL is read (`service.state.by_url` picks the store by
it, both stores and `service.state.load` parse it) and for the one rule of showing it:
messages and logs carry `redacted_url(url)`, never the URL itself.

Single node: `redis://`, `rediss://` (TLS), `unix://`, read by redis-py's own `parse_url`.
Redis Cluster: `redis+cluster://[user:password@]host:port[,host:port...][?option=value]`
(TLS: `rediss+cluster://`); the nodes are startup nodes (one answering node is enough to
discover the cluster) and the options are redis-py's URL options, as for `redis://`.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

from redis.asyncio.connection import SSLConnection, parse_url

from service.errors import SettingsError

CLUSTER_SCHEMES = {"redis+cluster": "redis", "rediss+cluster": "rediss"}
"""Cluster URL scheme -> the single-node scheme its options are read with."""

_SECRET_PARAMETERS = ("pass", "secret", "token", "auth")
"""Query parameters whose values are hidden (substrings of the lower-cased name)."""


def is_cluster_url(url: str) -> bool:
    """Whether `url` names a Redis Cluster (`redis+cluster://`, `rediss+cluster://`)."""
    return url.partition("://")[0].lower() in CLUSTER_SCHEMES


def url_error(shown: str, error: ValueError) -> SettingsError:
    """A URL redis-py refused -> one line naming the setting and the URL as `shown`
    (password redacted). Quoted values in redis-py's reason are masked: a mistyped URL can
    put a password where a port was expected ("could not be cast ... as 'secret'")."""
    reason = re.sub(r"as '[^']*'", "as '***'", str(error).splitlines()[0] if str(error) else "")
    if "port" in reason.lower():  # the port's text may be a password typed without "@"
        shown = f"{shown.partition('://')[0]}://***"
    return SettingsError(f"invalid Redis URL (QUERYREC_REDIS_URL) {shown}: {reason or 'malformed'}")


def parse_single_url(url: str, shown: str) -> dict[str, Any]:
    """redis-py's connection options of a single-node URL (redis://, rediss://, unix://);
    SettingsError (`url_error`) when redis-py refuses it (scheme, port, IPv6, options)."""
    try:
        return dict(parse_url(url))
    except ValueError as error:
        raise url_error(shown, error) from None


def parse_cluster_url(url: str, shown: str) -> tuple[list[tuple[str, int]], dict[str, Any]]:
    """-> (startup nodes as (host, port), connection options for redis-py).

    The options are what redis-py reads from the same URL with the single-node scheme
    (user, password, query parameters such as `socket_timeout`; TLS for `rediss+`).
    SettingsError naming `shown` (the URL as messages may show it: password redacted) on
    a malformed URL or a database other than 0 (a cluster has only database 0).
    """
    scheme = url.partition("://")[0].lower()
    if scheme not in CLUSTER_SCHEMES:
        raise SettingsError(f"{shown}: not a Redis Cluster URL (redis+cluster://host:port,...)")
    try:
        parts = urlsplit(url)
    except ValueError:
        raise SettingsError(f"{shown}: not a valid URL") from None
    userinfo, at, hosts = parts.netloc.rpartition("@")
    nodes = []
    for item in hosts.split(","):
        host, colon, port = item.strip().rpartition(":")
        host = host.strip("[]")  # IPv6 literal
        if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise SettingsError(
                f"{shown}: each cluster node must be host:port (comma-separated), "
                f"not {item.strip()!r}"
            )
        nodes.append((host, int(port)))
    first = hosts.split(",")[0].strip()
    single = f"{CLUSTER_SCHEMES[scheme]}://{userinfo}{at}{first}{parts.path}"
    if parts.query:
        single += f"?{parts.query}"
    options = parse_single_url(single, shown)
    options.pop("host", None)
    options.pop("port", None)
    if options.pop("connection_class", None) is SSLConnection:
        options["ssl"] = True
    if options.pop("db", 0) not in (0, None):
        raise SettingsError(f"{shown}: a Redis Cluster has only database 0")
    return nodes, options


def redacted_url(url: str) -> str:
    """The URL without its password in any form, for messages and logs.

    Read the way redis-py reads it (`urllib.parse.urlsplit`): the user info is everything
    before the LAST "@" of the network location (a password may hold "@"); `user:pw@`
    becomes `user:***@`, `:pw@` and `pw@` become `***@`; query parameters such as
    `?password=` are masked; the fragment is dropped. Last, every occurrence of a password
    found in the URL (raw or percent-encoded) is masked in the result, whatever the URL's
    shape. An unparseable URL shows its scheme only.
    """
    scheme, separator, _ = url.partition("://")
    if not separator:  # not a URL redis-py accepts; show it only when nothing can hide in it
        return "***" if "@" in url or "pass" in url.lower() else url
    try:
        parts = urlsplit(url)
        query = parse_qsl(parts.query, keep_blank_values=True)
    except ValueError:
        return f"{scheme}://***"
    secrets: list[str] = []
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user, has_password, password = userinfo.partition(":")
        secrets.append(unquote(password if has_password else user))
        netloc = f"{user}:***@{hostport}" if has_password and user else f"***@{hostport}"
    masked = []
    for name, value in query:
        if any(word in name.lower() for word in _SECRET_PARAMETERS):
            secrets.append(value)
            value = "***"
        masked.append((name, value))
    text = f"{parts.scheme}://{netloc}{parts.path}"
    if masked:
        text += "?" + urlencode(masked, safe="*")
    for secret in secrets:
        if secret:
            for form in {secret, quote(secret, safe=""), quote(secret)}:
                text = text.replace(form, "***")
    return text
