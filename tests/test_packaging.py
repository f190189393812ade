"""The install: the twistd plugin is found, the unit file is valid."""

import os
import subprocess
import sys
from pathlib import Path

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
    result = subprocess.run([str(BIN / "twistd"), "-n", "pypioncouch", "--couch", "ftp://x/"],
                            capture_output=True, text=True, cwd="/")
    assert result.returncode != 0
    assert "--couch: not an http(s) URL" in result.stdout + result.stderr
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
