"""URLs given on the command line: credentials split off, origins compared, passwords
never shown."""

import pytest

from pypioncouch.urls import BadURL, redact, same_origin, split_credentials


@pytest.mark.parametrize("url, expected", [
    ("https://pypi.org", ("https://pypi.org/", None)),
    ("http://u:p%40ss@127.0.0.1:5984/db", ("http://127.0.0.1:5984/db/", ("u", "p@ss"))),
    ("https://token@private.example/", ("https://private.example/", ("token", ""))),
    ("http://[::1]:8080/", ("http://[::1]:8080/", None)),
    # An "@" of the path, as some private indexes have (feed@view)
    ("https://build:PAT@pkgs.example.com/org/_packaging/feed@Local/pypi/simple/",
     ("https://pkgs.example.com/org/_packaging/feed@Local/pypi/simple/", ("build", "PAT"))),
    ("https://pkgs.example.com:8443/_packaging/feed@Local/pypi/simple/",
     ("https://pkgs.example.com:8443/_packaging/feed@Local/pypi/simple/", None)),
])
def test_credentials_are_split_off_a_base_url(url, expected):
    assert split_credentials(url) == expected


@pytest.mark.parametrize("url, message", [
    ("ftp://pypi.org/", "not an http(s) URL with a host: 'ftp://pypi.org/'"),
    ("http://u:secret@host:99999/", "bad port in URL: 'http://u:***@host:99999/'"),
    ("https://u:secret@pypi.example/?token=abc",
     "a base URL cannot take a query or fragment: 'https://u:***@pypi.example/?token=abc'"),
    ("https://pypi.example/#simple",
     "a base URL cannot take a query or fragment: 'https://pypi.example/#simple'"),
    ("http://admin:12/34@127.0.0.1:5984/",
     "the password in 'http://admin:***@127.0.0.1:5984/' holds a '/', '?' or '#': "
     "percent-encode it (%2F, %3F, %23)"),
    ("http://admin:pa#ss9@127.0.0.1:5984/",
     "the password in 'http://admin:***@127.0.0.1:5984/' holds a '/', '?' or '#': "
     "percent-encode it (%2F, %3F, %23)"),
])
def test_a_base_url_that_cannot_be_used_is_one_line_without_its_password(url, message):
    with pytest.raises(BadURL) as refused:
        split_credentials(url)
    assert str(refused.value) == message


@pytest.mark.parametrize("url, other, same", [
    ("https://private.example/packages/a.whl", "https://u:p@private.example/simple/", True),
    ("https://private.example:443/a.whl", "https://PRIVATE.example/", True),
    ("http://private.example/a.whl", "https://private.example/", False),
    ("https://files.example/a.whl", "https://private.example/", False),
    ("https://private.example:8443/a.whl", "https://private.example/", False),
    ("https://private.example.evil/a.whl", "https://private.example/", False),
])
def test_credentials_go_to_their_own_origin_only(url, other, same):
    assert same_origin(url, other) is same


@pytest.mark.parametrize("url, shown", [
    ("https://mirror:s3cret@private.example/simple/?q=1",
     "https://mirror:***@private.example/simple/?q=1"),
    ("https://private.example/", "https://private.example/"),
    ("https://T0KEN@pypi.fury.io/me/", "https://***@pypi.fury.io/me/"),  # (a token
    ("https://T0KEN:@pypi.fury.io/me/", "https://***@pypi.fury.io/me/"),  # as the user)
    ("https://private.example/feed@Local/", "https://private.example/feed@Local/"),
    ("http://admin:pa/ss?w#rd@127.0.0.1:5984/", "http://admin:***@127.0.0.1:5984/"),
    ("http://admin:p@ss:w@127.0.0.1:5984/db", "http://admin:***@127.0.0.1:5984/db"),
    ("http://admin:p%40ss@[::1]:5984/", "http://admin:***@[::1]:5984/"),
    ("https://build:PAT@pkgs.example.com/org/_packaging/feed@Local/pypi/simple/",
     "https://build:***@pkgs.example.com/org/_packaging/feed@Local/pypi/simple/"),
    ("http://admin:12/34/56@127.0.0.1:5984/", "http://admin:***@127.0.0.1:5984/"),
])
def test_redact_hides_the_password_whatever_it_holds(url, shown):
    assert redact(url) == shown


@pytest.mark.parametrize("text, shown", [
    ("argument --db: 'http://b:PW2@h/db' is not a database name",
     "argument --db: 'http://b:***@h/db' is not a database name"),
    ("argument --concurrency: 'http://u:my secret@h/' is not a number",
     "argument --concurrency: 'http://u:***@h/' is not a number"),
    ("argument --concurrency: 'u:s3cret@h:5984' is not a number",
     "argument --concurrency: 'u:***@h:5984' is not a number"),
    ("PYPIONCOUCH_DB='https://u:p@ss@h/' is wrong", "PYPIONCOUCH_DB='https://u:***@h/' is wrong"),
    ("argument --source: invalid choice: 'x' (choose from 'json', 'xmlrpc')",
     "argument --source: invalid choice: 'x' (choose from 'json', 'xmlrpc')"),
])
def test_a_message_quoting_what_was_typed_shows_no_password(text, shown):
    from pypioncouch.urls import redact_text

    assert redact_text(text) == shown


@pytest.mark.parametrize("url, refused", [
    ("https://pypi.org/simple/", True), ("https://pypi.org/simple", True),
    ("http://devpi.example/root/pypi/+simple/", True),
    ("https://pypi.org/", False), ("http://devpi.example/root/pypi/", False),
    ("http://devpi.example/alice/simple/", False),  # (a devpi index named "simple")
])
def test_an_index_url_is_its_root_not_its_simple_api(url, refused):
    from pypioncouch.urls import check_index_url

    if refused:
        with pytest.raises(BadURL):
            check_index_url(url)
    else:
        assert check_index_url(url) == url


@pytest.mark.parametrize("url, expected", [
    ("http://u:p@host:5984/pypi", ("http://u:p@host:5984/", "pypi")),
    ("http://host:5984/", ("http://host:5984/", "default")),
    ("http://host:5984", ("http://host:5984/", "default")),
    # behind a proxy's path: the database is the last segment
    ("https://u:p@host/couchdb/pypi/", ("https://u:p@host/couchdb/", "pypi")),
    ("https://host/a/b/pypi", ("https://host/a/b/", "pypi")),
    ("http://host:5984/team%2Fpypi", ("http://host:5984/", "team/pypi")),
])
def test_a_database_url_is_its_server_and_its_last_segment(url, expected):
    from pypioncouch.urls import split_database_url

    assert split_database_url(url, "default") == expected


def test_a_database_url_whose_last_segment_is_no_database_name_says_so():
    from pypioncouch.urls import split_database_url

    with pytest.raises(BadURL, match="'Twisted' is not a database name"):
        split_database_url("http://u:secret@host:5984/pypi/Twisted", "pypi")
