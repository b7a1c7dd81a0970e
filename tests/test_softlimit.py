"""Each kind of session works as nobody under the `softlimit -m` the README documents
for it, and under the one service/run uses (tools/softlimit.py measured them)."""

import re
import shutil

import pytest

from harness.install import installed_prefix
from harness.paths import ROOT
from harness.softlimit import SESSION_KINDS, LimitedService
from harness.system_users import world_readable_dir

ROW = re.compile(r"^\| `([a-z0-9-]+)`: .*\| `(\d+)` \|$", re.M)


def documented() -> dict:
    """The README's table: session kind -> the -m it says that kind needs."""
    return {kind: int(value) for kind, value in ROW.findall((ROOT / "README.md").read_text())}


def run_script(name: str) -> tuple[int, int]:
    """`softlimit -m M -s S` of a service/ run script."""
    found = re.search(r"softlimit -m (\d+) -s (\d+)", (ROOT / "service" / name).read_text())
    assert found, name
    return int(found[1]), int(found[2])


@pytest.fixture(scope="module")
def service(pg) -> LimitedService:
    workdir = world_readable_dir("qmail-esmtpd-softlimit-")  # nobody reads control/ there
    svc = LimitedService(workdir, installed_prefix(), pg)
    yield svc
    svc.db.close()
    shutil.rmtree(workdir, ignore_errors=True)


def test_the_readme_documents_every_kind():
    assert sorted(documented()) == sorted(SESSION_KINDS)


def test_the_run_scripts_agree():
    assert run_script("run") == run_script("run-submission") == run_script("run-smtps")
    memory, _ = run_script("run")
    needs = documented()
    assert memory >= max(needs[kind] for kind in ("plain", "starttls", "auth", "auth-starttls"))


@pytest.mark.parametrize("kind", SESSION_KINDS)
def test_session_under_its_documented_minimum(service: LimitedService, kind: str):
    _, stack = run_script("run")
    assert service.session(kind, documented()[kind], stack) == "ok"


@pytest.mark.parametrize("kind", ["plain", "starttls", "auth", "auth-starttls"])
def test_session_under_service_run(service: LimitedService, kind: str):
    memory, stack = run_script("run")
    assert service.session(kind, memory, stack) == "ok"


def test_the_limit_is_in_force(service: LimitedService):
    """Far below the minimum the session fails: the figures above are not vacuous."""
    _, stack = run_script("run")
    assert service.session("plain", 5_000_000, stack) != "ok"
    assert service.session("auth", documented()["plain"], stack) != "ok"
