# qmail-esmtpd: `make demo` to try it, `make test` to check it.
PYTHON  ?= python3
# Recursive (=), not :=, because on a bare machine python3 exists only once `deps` ran.
REALPY   = $(shell $(PYTHON) -c 'import os, sys; print(os.path.realpath(sys.executable))')
VENV    ?= .venv
VPY     := $(VENV)/bin/python
PREFIX  ?= /var/qmail
DESTDIR ?=
BINDIR  := $(PREFIX)/bin
LIBDIR  := $(PREFIX)/lib/qmail-esmtpd
CONFORMANCE := $(VPY) tests/conformance/dialog.py

.PHONY: deps deps-demo venv test lint conformance unit cdb install uninstall wheels demo bench clean

# The Debian packages the tests (or just the demo) need: installed as root,
# otherwise the apt-get command to run is printed.
deps:
	PYTHON=$(PYTHON) sh tools/install-deps

deps-demo:
	PYTHON=$(PYTHON) sh tools/install-deps demo

venv: $(VENV)/.stamp $(VENV)/bin/qmail-esmtpd-server

$(VENV)/.stamp: setup.cfg pyproject.toml tools/mklauncher.py
	$(REALPY) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q -e '.[test]'
	for entry in qmail-esmtpd=qmail_esmtpd.cli:run \
	        qmail-esmtpd-checkpassword=qmail_esmtpd.pop3.checkpassword:main; do \
	    $(VPY) tools/mklauncher.py $(VENV)/bin/$${entry%%=*} $(VPY) $${entry#*=} \
	        $(CURDIR) $$($(VPY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') \
	    || exit 1; done
	touch $@

# The warm server's launcher, made the same way (also in a venv made before it existed).
$(VENV)/bin/qmail-esmtpd-server: $(VENV)/.stamp
	$(VPY) tools/mklauncher.py $@ $(VPY) qmail_esmtpd.forkserver:main $(CURDIR) \
	    $$($(VPY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')

test: deps venv lint conformance unit

lint: venv
	$(VENV)/bin/ruff check qmail_esmtpd tests tools bench \
	    tests/conformance/fake-qmail-queue tests/conformance/fake-checkpassword \
	    tests/conformance/through-server
	$(VENV)/bin/mypy

# The recorded qmail-smtpd transcripts, then the AUTH patch's (their scenarios
# add the `{checkpassword} /bin/true` arguments themselves), qmail-spp's,
# the SMTPUTF8 patch's (their scenarios switch it on) and rblsmtpd's.
# tests/conformance/README.md
conformance: venv
	$(CONFORMANCE) --check tests/conformance/golden tests/conformance/scenarios \
	    -- $(abspath $(VENV))/bin/qmail-esmtpd
	$(CONFORMANCE) --check tests/conformance/golden-auth tests/conformance/scenarios-auth \
	    -- $(abspath $(VENV))/bin/qmail-esmtpd
	$(CONFORMANCE) --check tests/conformance/golden-spp tests/conformance/scenarios-spp \
	    -- $(abspath $(VENV))/bin/qmail-esmtpd
	$(CONFORMANCE) --check tests/conformance/golden-utf8 tests/conformance/scenarios-utf8 \
	    -- $(abspath $(VENV))/bin/qmail-esmtpd
	$(CONFORMANCE) --check tests/conformance/golden-rbl tests/conformance/scenarios-rbl \
	    -- $(abspath $(VENV))/bin/qmail-esmtpd

# TEST_JOBS processes run the test files (pytest-xdist), each with its own
# PostgreSQL cluster; TEST_JOBS=0 runs them all in this one.
TEST_JOBS ?= 2

unit: venv
	$(VPY) -m pytest -q -n $(TEST_JOBS) --dist loadfile

# qmail's convention: the admin edits /etc/tcp.smtp, and tcprules compiles it
# into /etc/tcp.smtp.cdb, which the run scripts read (their RULES= line).  The
# first time, tcp.smtp.example becomes /etc/tcp.smtp; an existing one is never
# replaced.  SMTPRULES=FILE names another source (FILE.cdb is made beside it).
SMTPRULES ?= /etc/tcp.smtp

cdb:
	@if [ ! -e '$(SMTPRULES)' ]; then \
	    install -m 644 tcp.smtp.example '$(SMTPRULES)' && \
	    echo '$(SMTPRULES): made from tcp.smtp.example (edit it, then make cdb again)'; fi
	tcprules '$(SMTPRULES).cdb' '$(SMTPRULES).tmp' < '$(SMTPRULES)'
	chmod 644 '$(SMTPRULES).cdb'

# Installs beside qmail, never over qmail-smtpd: the run script chooses; the
# manual pages go to PREFIX/man (man -M PREFIX/man qmail-esmtpd).
# tools/install.py says how (interpreter qmaild can run, explicit modes, nothing
# written into the checkout, defaults that follow PREFIX, a trial run as qmaild).
# PYTHON=... names the interpreter the launchers use (default /usr/bin/python3);
# WHEELS=DIR installs with no network from a folder `make wheels` filled.
# TRY_AS=user1,user2 names the users the trial run tries, first that exists
# (default qmaild,nobody).
INSTALL_PYTHON = $(if $(filter-out default file,$(origin PYTHON)),--python '$(PYTHON)')
WHEELS  ?=
TRY_AS  ?=

install:
	$(PYTHON) tools/install.py install --prefix '$(PREFIX)' --destdir '$(DESTDIR)' \
	    $(INSTALL_PYTHON) $(if $(WHEELS),--wheels '$(WHEELS)') $(if $(TRY_AS),--user '$(TRY_AS)')

# What install put under PREFIX (programs, library, run scripts, systemd units,
# manual pages) taken away; the control files, authfailkey among them, stay.
uninstall:
	$(PYTHON) tools/install.py uninstall --prefix '$(PREFIX)' --destdir '$(DESTDIR)'

# On a connected machine: every dependency as a wheel in one folder (default
# wheels/) to copy to an offline mail host and `make install WHEELS=...` there.
wheels:
	$(PYTHON) tools/install.py wheels '$(or $(WHEELS),wheels)' $(INSTALL_PYTHON)

demo: deps-demo venv
	$(VPY) demo/demo.py

bench: venv
	PYTHON=$(PYTHON) sh tools/install-deps bench
	$(VPY) -m bench

clean:
	rm -rf $(VENV) build *.egg-info demo/run wheels
