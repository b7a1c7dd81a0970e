"""The manual: every program answers --help and --version and does nothing
else then; the pages in man/ lint clean; and every option the programs take,
every control file and variable the code reads, has its entry in a page."""

import configparser
import os
import re
import subprocess
from pathlib import Path

import pytest

from qmail_esmtpd import __version__
from qmail_esmtpd.admin import parser as admin_parser
from qmail_esmtpd.serveroptions import OPTIONS_FLAGS, OPTIONS_WITH_VALUE

from harness.paths import ROOT

BIN = ROOT / ".venv" / "bin"
MAN = ROOT / "man"
PROGRAMS = ("qmail-esmtpd", "qmail-esmtpd-server", "qmail-esmtpd-checkpassword",
            "qmail-esmtpd-user")
PAGES = {"qmail-esmtpd.8", "qmail-esmtpd-server.8", "qmail-esmtpd-user.8",
         "qmail-esmtpd-checkpassword.8", "qmail-esmtpd-control.5"}


def run_with_fd3(argv: list, stdin: bytes = b"QUIT\r\n", env: dict | None = None) -> tuple:
    """(exit status, stdout, stderr, what is still unread on fd 3) for one run:
    fd 3 holds a login, as qmail-popup would give it."""
    read_end, write_end = os.pipe()
    os.write(write_end, b"alice\0secret\0\0")
    os.close(write_end)
    try:
        out = subprocess.run([str(a) for a in argv], input=stdin, capture_output=True,
                             timeout=60, pass_fds=(read_end,),
                             env={"PATH": "/usr/bin:/bin", **(env or {})},
                             preexec_fn=lambda: os.dup2(read_end, 3))
        os.set_blocking(read_end, False)
        try:
            left = os.read(read_end, 100)
        except BlockingIOError:
            left = b""
        return out.returncode, out.stdout, out.stderr, left
    finally:
        os.close(read_end)


@pytest.mark.parametrize("program", PROGRAMS)
@pytest.mark.parametrize("argument", ["--help", "--version"])
def test_help_and_version_answer_and_do_nothing_else(program: str, argument: str):
    status, stdout, stderr, left = run_with_fd3([BIN / program, argument])
    assert status == 0 and stderr == b"", (status, stdout, stderr)
    assert left == b"alice\0secret\0\0"  # fd 3 not read
    assert not stdout.startswith(b"220") and b"Traceback" not in stdout  # no session
    if argument == "--version":
        assert stdout == f"{program} {__version__}\n".encode()
    else:
        assert stdout.startswith(b"usage: ") and f"man 8 {program}\n".encode() in stdout


def test_the_version_is_setup_cfgs():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    assert cfg["metadata"]["version"] == "attr: qmail_esmtpd.__version__"
    from importlib.metadata import version

    assert version("qmail-esmtpd") == __version__


def test_only_an_exact_first_argument_is_help(tmp_path: Path):
    """After it, --help is the checkpassword command line's (the AUTH patch's)."""
    (tmp_path / "me").write_text("manual.example\n")
    env = {"QMAIL_CONTROL": str(tmp_path)}
    status, stdout, _, _ = run_with_fd3([BIN / "qmail-esmtpd", "/bin/true", "--help"], env=env)
    assert stdout.startswith(b"220 ") and b"221 " in stdout and status == 0, stdout
    status, stdout, _, _ = run_with_fd3([BIN / "qmail-esmtpd", "--helpme"], env=env)
    assert stdout.startswith(b"220 "), stdout


@pytest.mark.parametrize("page", sorted(PAGES))
def test_the_page_lints_clean(page: str):
    out = subprocess.run(["mandoc", "-T", "lint", str(MAN / page)], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and out.stdout == out.stderr == "", out


def test_man_has_the_pages():
    assert {p.name for p in MAN.iterdir()} == PAGES


# --- drift: what the code takes and reads, against what the pages say ---

def page(name: str) -> str:
    return (MAN / name).read_text()


def tags(text: str) -> list[str]:
    """The tag lines of a page's .TP paragraphs, roff fonts taken out."""
    lines = text.splitlines()
    found = [lines[i + 1] for i, line in enumerate(lines[:-1]) if line.startswith(".TP")]
    return [re.sub(r"\\f[BIRP]", " ", tag) for tag in found]


def short_options(text: str) -> set[str]:
    return {letter for tag in tags(text) for letter in re.findall(r"(?<!\\-)\\-(\w)\b", tag)}


def long_options(text: str) -> set[str]:
    return {"--" + word for tag in tags(text) for word in re.findall(r"\\-\\-([\w-]+)", tag)}


def tag_words(text: str) -> set[str]:
    return {word for tag in tags(text) for word in re.findall(r"[\w.]+", tag)}


SOURCES = sorted((ROOT / "qmail_esmtpd").rglob("*.py"))
CONTROL_READS = (r'controls\.(?:line|lines|number|path)\(b"([^"]+)"',
                 r'(?:flag|number)_setting\([^)]*?b"([^"]+)"')
SETTINGS = r'(?:flag|number)_setting\([^)]*?b"([^"]+)"'  # control/NAME and $NAME
VARIABLE_READS = (r'env\.get\(b"([A-Z0-9_]+)"', r'b"([A-Z0-9_]+)" in env\b',
                  r'environ\.get\("([A-Z0-9_]+)"')


def collected(patterns: "tuple[str, ...] | str", texts: list[str]) -> set[str]:
    if isinstance(patterns, str):
        patterns = (patterns,)
    return {name for text in texts for pattern in patterns
            for name in re.findall(pattern, text, re.S)}


def undocumented(texts: list[str]) -> list[str]:
    """What these sources read that no page names: control files as a tag of
    qmail-esmtpd-control(5), variables anywhere in a page."""
    controls = collected(CONTROL_READS, texts)
    variables = collected(VARIABLE_READS, texts) | {
        name.upper() for name in collected(SETTINGS, texts)}
    in_tags = tag_words(page("qmail-esmtpd-control.5"))
    everywhere = "\n".join(page(name) for name in PAGES)
    return sorted([f"control/{name}" for name in controls if name not in in_tags]
                  + [f"${name}" for name in variables
                     if not re.search(rf"(?<!\w){name}(?!\w)", everywhere)])


def test_every_control_file_and_variable_the_code_reads_has_its_entry():
    texts = [path.read_text() for path in SOURCES]
    assert len(collected(CONTROL_READS, texts)) > 30 and len(collected(VARIABLE_READS, texts)) > 20
    assert undocumented(texts) == []


def test_the_drift_check_finds_a_new_file_and_variable():
    new = ['controls.line(b"nosuchfile")', 'number_setting(c, env, b"nosuchlimit", 1)',
           'env.get(b"NOSUCHVARIABLE")']
    assert undocumented(new) == ["$NOSUCHLIMIT", "$NOSUCHVARIABLE", "control/nosuchfile",
                                 "control/nosuchlimit"]


def test_every_server_option_has_its_entry():
    documented = short_options(page("qmail-esmtpd-server.8"))
    assert set(OPTIONS_WITH_VALUE + OPTIONS_FLAGS) - documented == set()
    assert long_options(page("qmail-esmtpd-server.8")) >= {"--help", "--version"}


def test_every_admin_command_and_option_has_its_entry():
    text = page("qmail-esmtpd-user.8")
    p = admin_parser()
    options = {o for action in p._actions for o in action.option_strings if o.startswith("--")}
    commands = p._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for sub in commands.values():
        options |= {o for action in sub._actions for o in action.option_strings
                    if o.startswith("--") and o != "--help"}
    assert options - long_options(text) == set()
    first_words = {tag.split()[1] for tag in tags(text) if tag.startswith(".B ")}
    assert set(commands) - first_words == set()


@pytest.mark.parametrize("program", ["qmail-esmtpd", "qmail-esmtpd-checkpassword"])
def test_help_and_version_are_in_the_page(program: str):
    text = page(f"{program}.8")
    assert "\\-\\-help" in text and "\\-\\-version" in text


def test_man_finds_the_pages_in_a_folder(tmp_path: Path):
    """As `make install` lays them out: man -M PREFIX/man qmail-esmtpd."""
    for name in PAGES:
        folder = tmp_path / f"man{name[-1]}"
        folder.mkdir(exist_ok=True)
        (folder / name).write_bytes((MAN / name).read_bytes())
    out = subprocess.run(["man", "-M", str(tmp_path), "-P", "cat", "5", "qmail-esmtpd-control"],
                         capture_output=True, text=True, timeout=60,
                         env={"PATH": "/usr/bin:/bin", "MANWIDTH": "80"})
    assert out.returncode == 0 and "authfailkey" in out.stdout, out
