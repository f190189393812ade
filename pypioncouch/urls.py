"""URLs with credentials: split them off for Basic auth, and redact them for display.

Passwords must never reach a log line, a page or an error message; everything that
prints a URL prints ``redact(url)``.
"""

import re
from base64 import b64encode
from urllib.parse import unquote, urlsplit, urlunsplit


class BadURL(ValueError):
    """A URL that cannot name an HTTP server."""


_DATABASE_NAME = re.compile(r"^[a-z][a-z0-9_$()+/-]*$")  # CouchDB's own rule


def check_database_name(name: str) -> str:
    """``name`` if CouchDB takes it for a database of ours (not a system database
    such as ``_users``), else :class:`BadURL` saying what it takes."""
    if not _DATABASE_NAME.match(name or "") or len(name) > 238:
        raise BadURL(f"{name!r} is not a database name: a lower-case letter, then "
                     "lower-case letters, digits and _ $ ( ) + - /")
    return name


def basic_auth(auth: tuple[str, str]) -> str:
    """The ``Authorization`` header value for ``(user, password)``."""
    return "Basic " + b64encode(f"{auth[0]}:{auth[1]}".encode("utf-8")).decode("ascii")


def split_credentials(url: str) -> tuple[str, tuple[str, str] | None]:
    """Return ``(url without user:password@, (user, password) or None)``.

    The URL must be http(s) with a host; a path is kept and ends with ``/``.
    """
    parts = urlsplit(url.strip())
    if _password_cut_short(url.strip(), parts.netloc):
        # "user:pa/ss@host": a parser ends the host part at the "/" (a request would go
        # to host "user", port "pa"): say so, without the password
        raise BadURL(f"the password in {redact(url)!r} holds a '/', '?' or '#': "
                     "percent-encode it (%2F, %3F, %23)")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise BadURL(f"not an http(s) URL with a host: {redact(url)!r}")
    try:
        port = parts.port
    except ValueError:
        raise BadURL(f"bad port in URL: {redact(url)!r}") from None
    if parts.query or parts.fragment:  # paths are added to it: "?..." cannot be kept
        raise BadURL(f"a base URL cannot take a query or fragment: {redact(url)!r}")
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    netloc = host if port is None else f"{host}:{port}"
    path = parts.path if parts.path.endswith("/") else parts.path + "/"
    clean = urlunsplit((parts.scheme, netloc, path, "", ""))
    auth = None
    if parts.username is not None:
        auth = (unquote(parts.username), unquote(parts.password or ""))
    return clean, auth


def same_origin(url: str, other: str) -> bool:
    """Whether two URLs name the same scheme, host and port (credentials for one may
    go to the other)."""
    def origin(address):
        parts = urlsplit(address)
        try:
            port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
        except ValueError:
            return None
        return parts.scheme.lower(), (parts.hostname or "").lower(), port

    mine = origin(url)
    return mine is not None and mine == origin(other)


def _password_cut_short(url: str, netloc: str) -> bool:
    """Whether an "@" just past the parser's host part (in the first path segment, or
    the query or fragment before any "/") ends a ``user:password`` whose password
    holds a '/', '?' or '#'. (An "@" further on is a path's, as some indexes have.)"""
    if "@" in netloc or ":" not in netloc:
        return False
    rest = url.partition("://")[2][len(netloc):]
    near = rest[:1] + rest[1:].split("/", 1)[0]
    return "@" in near


def redact(url: str) -> str:
    """``url`` with any password replaced by ``***`` (the user name is kept), and a
    user name without a password too: a private index's token (Gemfury's
    ``https://TOKEN@...``, ``TOKEN:@``). A password holding a '/', '?' or '#' ends a
    parser's host part early and would be shown whole: when the host part has no "@"
    but the rest of the URL does, all before the last "@" is taken as the credentials
    (a path with an "@" and a port before it is then shown shortened: never a
    password)."""
    scheme, found, rest = url.partition("://")
    if not found:
        return url
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
    userinfo, at, _ = (authority if "@" in authority else rest).rpartition("@")
    if not at:
        return url
    user, _, password = userinfo.partition(":")
    if not password:
        if "@" not in authority:  # (the path's "@")
            return url
        return f"{scheme}://***@{rest[len(userinfo) + 1:]}"
    return f"{scheme}://{user}:***@{rest[len(userinfo) + 1:]}"


_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S*")
# user:password@ with blanks in the password, or without a scheme before it
_CREDENTIALS_IN_TEXT = re.compile(r"(?:(?<=://)|(?<![\w.+-]))([\w.+%-]*):[^@/'\"]*@")


def redact_text(text: str) -> str:
    """``text`` (a message quoting what was typed) with every URL in it redacted: a
    URL given where a number or a name was wanted is still a URL with a password."""
    text = _URL_IN_TEXT.sub(lambda found: redact(found.group()), text)
    return _CREDENTIALS_IN_TEXT.sub(lambda found: f"{found.group(1)}:***@", text)


def check_index_url(url: str) -> str:
    """``url`` if it can be an index's root (``https://pypi.org/``), else
    :class:`BadURL`: its Simple API's URL, what pip users know (``.../simple/``,
    devpi's ``.../+simple/``), would be asked for ``.../simple/simple/``."""
    base, _ = split_credentials(url)
    path = urlsplit(base).path.rstrip("/")
    # (devpi's index may be named "simple": its Simple API is then .../simple/+simple/)
    if path == "/simple" or path.rpartition("/")[2] == "+simple":
        root = redact(url).rstrip("/").rpartition("/")[0] + "/"
        raise BadURL(f"{redact(url)} is the index's Simple API: give the index's root "
                     f"URL ({root})")
    return url


def split_database_url(url: str, default_db: str) -> tuple[str, str]:
    """``http://u:p@host:5984/pypi`` -> ``("http://u:p@host:5984/", "pypi")``; the last
    segment is the database, any before it a proxy's path to the server
    (``https://host/couchdb/pypi``); a URL without a path is the server's, the
    database ``default_db``."""
    split_credentials(url)  # (what is wrong with the URL as given: never its password)
    parts = urlsplit(url)
    segments = [s for s in parts.path.split("/") if s]  # (a "/" in a name is %2F)
    prefix = "".join(f"{s}/" for s in segments[:-1])
    server = urlunsplit((parts.scheme, parts.netloc, "/" + prefix, "", ""))
    split_credentials(server)  # says what is wrong with a bad URL
    return server, check_database_name(unquote(segments[-1]) if segments else default_db)


def one_segment_too_many(option: str, url: str, db_name: str) -> str:
    """What to say of a database's URL (``--replicate``, ``--upstream``) whose server
    part names the database ``db_name``: the URL names something in it."""
    return (f"{option} {redact(url)} names something inside the database {db_name!r} "
            f"(a document?): give the database's URL, ending with /{db_name}")


def option_given(args: list[str], option: str) -> bool:
    """Whether the command line ``args`` gives ``option`` (``--db x``, ``--db=x``): its
    value there wins over the environment's, a wrong one of which is then no matter."""
    return any(arg == option or arg.startswith(option + "=") for arg in args)
