"""The install: the twistd plugin is found, the unit file is valid."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .helpers import requires_command

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def test_twistd_lists_the_plugin_and_its_options():
    out = subprocess.run([str(BIN / "twistd"), "--help"], capture_output=True, text=True,
                         cwd="/", check=True).stdout
    assert "pypioncouch" in out
    help_text = subprocess.run([str(BIN / "twistd"), "pypioncouch", "--help"],
                               capture_output=True, text=True, cwd="/", check=True).stdout
    for option in ("--couch", "--db", "--pypi", "--listen", "--interval", "--concurrency",
                   "--changes", "--no-sync"):
        assert option in help_text


def test_python_dash_m_is_the_command():
    from pypioncouch import __version__

    done = subprocess.run([sys.executable, "-m", "pypioncouch", "--version"],
                          capture_output=True, text=True, cwd="/", timeout=60)
    assert (done.returncode, done.stdout) == (0, f"pypioncouch {__version__}\n")


def test_the_plugin_is_found_after_a_plain_pip_install(tmp_path):
    """``pip install .`` (not editable) into a fresh venv finds the plugin too."""
    import sysconfig

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    # Borrow the dependencies (not pypioncouch itself: a path in a .pth file does not
    # run that folder's own .pth files, so the editable install stays invisible).
    ours = sysconfig.get_paths()["purelib"]
    theirs = subprocess.run([str(venv / "bin" / "python"), "-c",
                             "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                            capture_output=True, text=True, check=True).stdout.strip()
    Path(theirs, "borrowed.pth").write_text(ours + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"),
                    "install", "--quiet", "--no-deps", "--no-build-isolation", str(REPO)],
                   check=True, capture_output=True, cwd=tmp_path)
    where = subprocess.run([str(venv / "bin" / "python"), "-c",
                            "import pypioncouch; print(pypioncouch.__file__)"],
                           capture_output=True, text=True, cwd=tmp_path, check=True).stdout
    assert where.startswith(str(venv))  # the copy pip installed, not the work tree
    out = subprocess.run([str(venv / "bin" / "python"), "-m", "twisted", "--help"],
                         capture_output=True, text=True, cwd=tmp_path, check=True).stdout
    assert "pypioncouch" in out


def test_bad_options_get_one_clear_line():
    for runner in (["twistd", "-n"], ["twist"]):  # (each printed its whole help first)
        for args, said in ((["--couch", "ftp://x/"], "--couch: not an http(s) URL"),
                           (["--coucj", "http://x/"], "option --coucj not recognized")):
            result = subprocess.run([str(BIN / runner[0]), *runner[1:], "pypioncouch",
                                     *args], capture_output=True, text=True, cwd="/")
            assert result.returncode == 1
            lines = (result.stdout + result.stderr).splitlines()
            assert len(lines) == 1 and lines[0].startswith(f"pypioncouch: {said}"), lines
    result = subprocess.run([str(BIN / "twistd"), "-n", "pypioncouch", "--couch",
                             "http://admin:pa#ss9@127.0.0.1:5984/"],
                            capture_output=True, text=True, cwd="/")
    said = result.stdout + result.stderr
    assert result.returncode != 0 and "percent-encode it" in said and "ss9" not in said


def test_a_bad_number_in_the_environment_gets_one_clear_line():
    result = subprocess.run([str(BIN / "twistd"), "-n", "pypioncouch", "--couch",
                             "http://127.0.0.1:9/"], capture_output=True, text=True, cwd="/",
                            env={**os.environ, "PYPIONCOUCH_INTERVAL": "soon"})
    assert result.returncode != 0
    assert "PYPIONCOUCH_INTERVAL='soon' is not a number" in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr


@requires_command("systemd-analyze", "systemd")
def test_the_systemd_unit_verifies(tmp_path):
    unit = (REPO / "etc" / "pypioncouch.service").read_text()
    unit = unit.replace("/opt/pypioncouch/bin/twistd", str(BIN / "twistd"))
    unit = unit.replace("/etc/pypioncouch/pypioncouch.env", str(tmp_path / "env"))
    (tmp_path / "env").write_text((REPO / "etc" / "pypioncouch.env").read_text())
    path = tmp_path / "pypioncouch.service"
    path.write_text(unit)
    result = subprocess.run(["systemd-analyze", "verify", str(path)], capture_output=True,
                            text=True, env={**os.environ, "SYSTEMD_LOG_LEVEL": "warning"})
    problems = [line for line in (result.stdout + result.stderr).splitlines()
                if "pypioncouch" in line]
    assert result.returncode == 0 and not problems, result.stdout + result.stderr


BASE = ["--couch", "http://127.0.0.1:9/", "--listen", "tcp:0:interface=127.0.0.1"]


@pytest.mark.parametrize("args, env, message", [
    (["--interval", "nan"], {}, "--interval must be a positive number of seconds"),
    (["--interval", "inf"], {}, "--interval must be a positive number of seconds"),
    (["--timeout", "-1"], {}, "--timeout must be a positive number of seconds"),
    (["--max-lag", "-5"], {}, "--max-lag must be a positive number of seconds"),
    ([], {"PYPIONCOUCH_MAX_LAG": "nan"}, "--max-lag must be a positive number of seconds"),
    (["--files", "/tmp", "--files-max-gb", "nan"], {}, "--files-max-gb must be a positive"),
    (["--db", "_users"], {}, "--db: '_users' is not a database name"),
    (["--db", "PyPI"], {}, "--db: 'PyPI' is not a database name"),
    (["--pypi", "https://pypi.org/simple/"], {},
     "--pypi: https://pypi.org/simple/ is the index's Simple API: give the index's root "
     "URL (https://pypi.org/)"),
    (["--listen", "ssl:18775:privateKey=/nonexistent.pem"], {},
     "--listen 'ssl:18775:privateKey=/nonexistent.pem': No such file or directory: "
     "/nonexistent.pem"),
    (["--listen", "tcp:eighty"], {}, "--listen 'tcp:eighty' is not an endpoint string"),
    (["--max-removals", "abc"], {}, "--max-removals 'abc' is not a whole number"),
    (["--interval", "soon"], {}, "--interval 'soon' is not a number"),
    # systemd's EnvironmentFile keeps a trailing comment in the value
    ([], {"PYPIONCOUCH_NO_SYNC": "1  # serve a replica"},
     "PYPIONCOUCH_NO_SYNC='1  # serve a replica' is neither 1/true/yes nor 0/false/no"),
])
def test_daemon_values_that_make_no_sense_are_refused_in_one_line(args, env, message,
                                                                 monkeypatch):
    from twisted.python import usage

    from pypioncouch.service import Options

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(usage.UsageError) as refused:
        Options().parseOptions(BASE + args)
    assert str(refused.value).startswith(message), refused.value


def test_a_wrong_environment_value_is_no_matter_when_the_command_line_gives_its_own(
        monkeypatch):
    """(an environment file's mistake stopped a run by hand that set the option)"""
    from twisted.python import usage

    from pypioncouch.service import Options

    monkeypatch.setenv("PYPIONCOUCH_INTERVAL", "soon")
    monkeypatch.setenv("PYPIONCOUCH_NO_SYNC", "1  # a comment")
    options = Options()
    options.parseOptions(BASE + ["--interval=30", "--no-sync"])
    assert options["interval"] == 30.0 and options["no-sync"]
    result = subprocess.run([str(BIN / "pypioncouch"), "--update", "http://127.0.0.1:9/",
                             "--concurrency", "3", "--db", "x"], capture_output=True,
                            text=True, cwd="/", env={**os.environ, "PYPIONCOUCH_CONCURRENCY":
                                                     "many", "PYPIONCOUCH_DB": "X"})
    assert result.returncode == 1 and "PYPIONCOUCH" not in result.stderr, result.stderr
    monkeypatch.delenv("PYPIONCOUCH_NO_SYNC")
    with pytest.raises(usage.UsageError) as refused:  # (not given: still said)
        Options().parseOptions(BASE)
    assert str(refused.value) == "PYPIONCOUCH_INTERVAL='soon' is not a number"


def test_daemon_flags_from_the_environment():
    from pypioncouch.service import Options

    for value, expected in (("1", True), ("yes", True), (" TRUE ", True), ("0", False),
                            ("no", False), ("", False)):
        os.environ["PYPIONCOUCH_NO_SYNC"] = value
        try:
            options = Options()
            options.parseOptions(BASE)
        finally:
            del os.environ["PYPIONCOUCH_NO_SYNC"]
        assert bool(options["no-sync"]) is expected, value


@pytest.mark.parametrize("args, message", [
    (["--concurrency", "0"], "argument --concurrency: '0' is not a number from 1 to 100"),
    (["--timeout", "nan"], "argument --timeout: 'nan' is not a positive number of seconds"),
    (["--db", "_users"], "argument --db: '_users' is not a database name"),
    (["--update", "localhost:5984"], "--update: not an http(s) URL with a host: "
                                     "'localhost:5984'"),
    (["--update", "http://admin:pa/ss9@h/db"], "--update: the password in "
                                               "'http://admin:***@h/db' holds a '/'"),
    (["--pypi", "ftp://x/"], "--pypi: not an http(s) URL with a host: 'ftp://x/'"),
    # (asked for .../simple/simple/ after 18 s of "PyPI no longer serves XML-RPC")
    (["--pypi", "https://u:ss9@pypi.example/simple/"],
     "--pypi: https://u:***@pypi.example/simple/ is the index's Simple API: give the "
     "index's root URL (https://u:***@pypi.example/)"),
    (["--pypi", "http://devpi.example/root/pypi/+simple"],
     "--pypi: http://devpi.example/root/pypi/+simple is the index's Simple API: give the "
     "index's root URL (http://devpi.example/root/pypi/)"),
])
def test_command_line_values_that_make_no_sense_are_refused_in_one_line(args, message):
    result = subprocess.run([str(BIN / "pypioncouch"), "--update", "http://127.0.0.1:9/",
                             *args], capture_output=True, text=True, cwd="/")
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and "ss9" not in result.stderr


def test_a_wrong_index_in_the_environment_is_said_by_its_name():
    """(it was said as --pypi's, which the user did not give)"""
    result = subprocess.run([str(BIN / "pypioncouch"), "--update", "http://127.0.0.1:9/"],
                            capture_output=True, text=True, cwd="/",
                            env={**os.environ, "PYPIONCOUCH_PYPI": "http://u:ss9@h/simple/"})
    assert result.returncode == 2 and result.stderr.splitlines()[-1] == (
        "pypioncouch: error: PYPIONCOUCH_PYPI='http://u:***@h/simple/': "
        "http://u:***@h/simple/ is the index's Simple API: give the index's root URL "
        "(http://u:***@h/)"), result.stderr


def test_a_couchdb_behind_a_path_prefix_is_taken_by_the_command_as_by_the_daemon():
    """(the command checked its server URL as a database's: "not a database URL")"""
    result = subprocess.run([str(BIN / "pypioncouch"), "--update",
                             "http://127.0.0.1:9/proxy/couchdb/", "--pypi",
                             "http://127.0.0.1:9/"], capture_output=True, text=True, cwd="/")
    assert result.returncode == 1, result.stderr  # (run, not refused: nothing listens)
    assert "127.0.0.1:9/proxy/couchdb/" in result.stderr and "database" not in result.stderr


@pytest.mark.parametrize("args, env", [
    (["--db", "http://b:PW2@h/db"], {}), (["--concurrency", "http://b:PW2@h/"], {}),
    (["--source", "http://b:PW2@h/"], {}), ([], {"PYPIONCOUCH_DB": "http://b:PW2@h/db"}),
    (["--timeout", "https://b:PW2@h/"], {}),
])
def test_a_url_typed_where_a_value_goes_is_refused_without_its_password(args, env):
    result = subprocess.run([str(BIN / "pypioncouch"), "--update", "http://127.0.0.1:9/",
                             *args], capture_output=True, text=True, cwd="/",
                            env={**os.environ, **env})
    assert result.returncode == 2 and "b:***@h/" in result.stderr, result.stderr
    assert "PW2" not in result.stderr


@pytest.mark.parametrize("args, env", [
    (["--interval", "http://b:PW2@h/"], {}), (["--db", "http://b:PW2@h/db"], {}),
    ([], {"PYPIONCOUCH_CONCURRENCY": "http://b:PW2@h/"}),
])
def test_the_daemon_refuses_a_url_typed_where_a_value_goes_without_its_password(
        args, env, monkeypatch):
    from twisted.python import usage

    from pypioncouch.service import Options

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(usage.UsageError) as refused:
        Options().parseOptions(BASE + args)
    assert "b:***@h/" in str(refused.value) and "PW2" not in str(refused.value)
    result = subprocess.run([str(BIN / "twistd"), "-n", "pypioncouch", *BASE, *args],
                            capture_output=True, text=True, cwd="/", env={**os.environ, **env})
    said = result.stdout + result.stderr
    assert result.returncode == 1 and "b:***@h/" in said and "PW2" not in said, said


def test_the_shipped_environment_file_sets_what_it_says():
    """Each line is NAME=VALUE or a comment of its own: systemd takes no comment after
    a value (a flag would be dropped)."""
    for line in (REPO / "etc" / "pypioncouch.env").read_text().splitlines():
        setting = line.lstrip("# ").strip()
        if line.startswith("#") and not setting.startswith("PYPIONCOUCH_"):
            continue  # a comment
        assert "#" not in setting and " " not in setting, line


@pytest.mark.parametrize("runner", [["twistd", "-n", "--pidfile="], ["twist"]])
def test_a_listen_address_in_use_stops_the_daemon_in_one_line(runner):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [str(BIN / runner[0]), *runner[1:], "pypioncouch", "--couch",
             "http://127.0.0.1:9/", "--listen", f"tcp:{port}:interface=127.0.0.1"],
            capture_output=True, text=True, cwd="/", timeout=60)
    said = result.stdout + result.stderr
    assert result.returncode != 0 and "Traceback" not in said
    assert f"pypioncouch: --listen tcp:{port}:interface=127.0.0.1: Address already in use" \
        in said


@pytest.mark.parametrize("listen, cause", [
    ("tcp:99999:interface=127.0.0.1", "OverflowError: bind(): port must be 0-65535."),
    ("unix:/nonexistent/dir/sock", "No such file or directory"),
])
def test_a_listen_address_that_cannot_be_had_stops_the_daemon_in_one_line(listen, cause):
    result = subprocess.run(
        [str(BIN / "twistd"), "-n", "--pidfile=", "pypioncouch", "--couch",
         "http://127.0.0.1:9/", "--listen", listen],
        capture_output=True, text=True, cwd="/", timeout=60)
    said = result.stdout + result.stderr
    assert result.returncode != 0 and "Traceback" not in said, said
    assert f"pypioncouch: --listen {listen}: {cause}" in said, said


def test_make_run_says_when_the_embedded_couchdb_port_is_taken(tmp_path):
    """A CouchDB of one's own on 5984 is not mistaken for the embedded server."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if k != "COUCH"}
        result = subprocess.run(
            [sys.executable, "-m", "pypioncouch.testing.devrun", "run",
             "--couch-port", str(port), "--var", str(tmp_path)],
            capture_output=True, text=True, cwd=REPO, timeout=60, env=env)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr == (f"port {port} on 127.0.0.1 is taken (another CouchDB?): "
                             "pouchdb-server cannot listen there; set COUCH_PORT to "
                             "another port, or COUCH to that server's URL to use it\n")


@pytest.mark.parametrize("variable, value, said", [
    ("COUCH_PORT", "abc", "COUCH_PORT='abc' is not a whole number from 1 to 65535"),
    ("COUCH_PORT", "70000", "COUCH_PORT='70000' is not a whole number from 1 to 65535"),
    ("PROJECTS", "2k", "PROJECTS='2k' is not a whole number from 1"),
])
def test_make_run_and_demo_refuse_a_wrong_number_in_one_line(variable, value, said,
                                                             tmp_path):
    env = {**{k: v for k, v in os.environ.items() if k != "COUCH"}, variable: value}
    result = subprocess.run(
        [sys.executable, "-m", "pypioncouch.testing.devrun", "demo", "--var", str(tmp_path)],
        capture_output=True, text=True, cwd=REPO, timeout=60, env=env)
    assert (result.returncode, result.stdout, result.stderr) == (1, "", said + "\n")


def test_make_demo_against_a_couchdb_of_ones_own_leaves_its_pypi_database_alone(
        couch_server, tmp_path):
    """``COUCH=... make demo``: the simulated PyPI's projects and serials go into a
    database of the demo's own, not into the "pypi" a real mirror may hold."""
    import base64
    import signal
    import socket
    import time
    import urllib.error
    import urllib.request

    from pypioncouch.urls import split_credentials

    base, credentials = split_credentials(couch_server.url)

    def status_of(path, method="GET"):
        request = urllib.request.Request(base + path, method=method)
        if credentials:
            token = base64.b64encode(":".join(credentials).encode()).decode()
            request.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                return answer.status
        except urllib.error.HTTPError as error:
            return error.code

    assert status_of("pypi") == 404 and status_of("pypi-demo") == 404
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    demo = subprocess.Popen(
        [sys.executable, "-m", "pypioncouch.testing.devrun", "demo", "--listen",
         f"tcp:{port}:interface=127.0.0.1", "--var", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
        env={**os.environ, "COUCH": couch_server.url, "PROJECTS": "15"})
    try:
        for _ in range(600):  # (the demo's first import done: its checkpoint saved)
            if status_of("pypi-demo/_local/pypioncouch-sync") == 200:
                break
            time.sleep(0.1)
        assert status_of("pypi-demo/_local/pypioncouch-sync") == 200
        assert status_of("pypi") == 404
    finally:
        demo.send_signal(signal.SIGINT)
        said = demo.communicate(timeout=60)[0]
        status_of("pypi-demo", method="DELETE")
    assert "Database:  pypi-demo (a demo's own)" in said, said[-2000:]
    assert not credentials or credentials[1] not in said  # (never printed)


def test_a_commands_error_is_one_line_without_a_password():
    """A server's reason may span lines (CouchDB's replicator's does), and a message
    may quote a URL that was typed."""
    from pypioncouch.cli import _one_line

    reason = ValueError("replication failed: {error,\n    {http_request_failed,\n"
                        "    \"https://admin:s3cret@target.example/pypi/\"}}\n")
    assert _one_line(reason) == ("replication failed: {error, {http_request_failed, "
                                 "\"https://admin:***@target.example/pypi/\"}}")
