#!/bin/sh
# `make demo`: qmail-esmtpd under tcpserver on 127.0.0.1, delivering into a
# Maildir under demo/run instead of a real qmail queue.  Ctrl-C stops it.
#
#   DEMO_PORT   port to listen on (default 2525)
#   DEMO_DIR    working folder: control/, tcp.smtp rules, Maildir/ (default demo/run)
#   QMAILQUEUE  if already set, used as is; otherwise demo/maildir-queue is used,
#               so the demo never injects into a real queue by accident.
set -eu

REPO=$(cd "$(dirname "$0")/.." && pwd -P)
PORT=${DEMO_PORT:-2525}
DIR=${DEMO_DIR:-$REPO/demo/run}
case $DIR in /*) ;; *) DIR=$(pwd -P)/$DIR ;; esac
SERVER=$REPO/.venv/bin/qmail-esmtpd

case $PORT in
    '' | *[!0-9]*) echo "demo: DEMO_PORT must be a port number, not '$PORT'" >&2; exit 1 ;;
esac
if [ ! -x "$SERVER" ]; then
    echo "demo: $SERVER is missing; run 'make venv' (or 'make demo') first" >&2
    exit 1
fi

# tcpserver and tcprules come from ucspi-tcp; swaks is the client to try it with.
# As root the script installs what is missing; otherwise it says what to install.
sh "$REPO/tools/install-deps" demo

# Control files and rules are written only when missing, so edits survive a rerun
# (add badmailfrom, databytes, smtpgreeting... to $DIR/control as you like).
mkdir -p "$DIR/control" "$DIR/Maildir/tmp" "$DIR/Maildir/new" "$DIR/Maildir/cur"
DIR=$(cd "$DIR" && pwd -P)
[ -f "$DIR/control/me" ] || echo demo.localhost >"$DIR/control/me"
[ -f "$DIR/control/rcpthosts" ] || printf 'demo.localhost\nlocalhost\n' >"$DIR/control/rcpthosts"
if [ ! -f "$DIR/tcp.smtp" ]; then
    cat >"$DIR/tcp.smtp" <<'EOF'
# 127.0.0.1 may relay; anyone else (127.0.0.2 too) may only mail to rcpthosts.
127.0.0.1:allow,RELAYCLIENT=""
:allow
EOF
fi
tcprules "$DIR/tcp.smtp.cdb" "$DIR/tcp.smtp.tmp" <"$DIR/tcp.smtp"

# STARTTLS: a self-signed certificate for the demo host, made once (delete
# $DIR/control/servercert.pem to get a new one, or put your own there).
HOST=$(head -n 1 "$DIR/control/me")
CERT=$DIR/control/servercert.pem
if [ ! -f "$CERT" ]; then
    if command -v openssl >/dev/null 2>&1; then
        (
            umask 077
            openssl req -x509 -newkey rsa:2048 -nodes -days 365 -subj "/CN=$HOST" \
                -keyout "$DIR/key.pem.tmp" -out "$DIR/cert.pem.tmp" 2>/dev/null
            cat "$DIR/cert.pem.tmp" "$DIR/key.pem.tmp" >"$CERT.tmp"
            rm -f "$DIR/cert.pem.tmp" "$DIR/key.pem.tmp"
            chmod 600 "$CERT.tmp"
            mv "$CERT.tmp" "$CERT"
        ) || echo "demo: could not make $CERT; going on without STARTTLS" >&2
    else
        echo "demo: no openssl to make $CERT with; going on without STARTTLS" >&2
    fi
fi

QMAIL_CONTROL=$DIR/control
if [ -n "${QMAILQUEUE:-}" ]; then
    where="messages go to $QMAILQUEUE (QMAILQUEUE was already set)"
else
    if ! command -v python3 >/dev/null 2>&1; then
        echo "demo: demo/maildir-queue needs python3 on PATH" >&2
        exit 1
    fi
    QMAILQUEUE=$REPO/demo/maildir-queue
    DEMO_MAILDIR=$DIR/Maildir
    export DEMO_MAILDIR
    where="messages land in $DIR/Maildir/new/"
fi
export QMAIL_CONTROL QMAILQUEUE

cat <<EOF

qmail-esmtpd demo: listening on 127.0.0.1:$PORT (control files in $QMAIL_CONTROL)

  send a message (127.0.0.1 may relay):
    swaks --server 127.0.0.1:$PORT --from you@demo.localhost --to someone@example.org --header 'Subject: hello'
EOF
if [ -f "$CERT" ]; then
    cat <<EOF
  the same inside TLS (STARTTLS, with the self-signed certificate in $CERT):
    swaks --server 127.0.0.1:$PORT --tls --from you@demo.localhost --to someone@example.org --header 'Subject: hello over TLS'
  or talk SMTP by hand inside TLS:
    openssl s_client -starttls smtp -connect 127.0.0.1:$PORT -crlf -quiet
EOF
fi
cat <<EOF
  see relaying refused (127.0.0.2 is not a relay client, example.org is not in rcpthosts):
    swaks --server 127.0.0.1:$PORT --local-interface 127.0.0.2 --to someone@example.org --quit-after RCPT
  or talk SMTP by hand:
    telnet 127.0.0.1 $PORT

  $where
EOF
if [ "$QMAILQUEUE" != /var/qmail/bin/qmail-queue ] && [ -x /var/qmail/bin/qmail-queue ]; then
    echo "  (a real qmail is installed; the demo leaves its queue alone:"
    echo "   QMAILQUEUE=/var/qmail/bin/qmail-queue make demo would use it)"
fi
echo "  Ctrl-C stops the demo."
echo

# -R -H: no ident or DNS lookups, so connections start at once; -l names this host
# in Received lines as control/me does, again without asking DNS.  -v logs to stderr.
exec tcpserver -v -R -H -l "$(head -n 1 "$DIR/control/me")" -x "$DIR/tcp.smtp.cdb" \
    127.0.0.1 "$PORT" "$SERVER"
