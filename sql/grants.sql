-- Least privilege for the SMTP service.  Run as the owner of the tables, after
-- schema.sql.  The service connects as the qmail user that runs qmail-esmtpd
-- (qmaild), e.g. over the unix socket with peer authentication:
--     CREATE ROLE qmaild LOGIN;
--
-- What qmail-esmtpd needs, and nothing more:
--   poppass:    read the user's row at AUTH time
--   sendcounts: read today's count at MAIL, charge (INSERT/UPDATE) per message,
--               refund (UPDATE) when qmail-queue refuses a charged message
--   sendas:     read the account's own sender addresses at AUTH time (used
--               only with control/senderbinding = 1)
--   authfailures: count recent failures (SELECT), record one (INSERT, or
--               UPDATE of its time when the same attempt comes again), and
--               expire rows older than a day (DELETE).  The key the attempts
--               are digested with is a file (control/authfailkey), never here.
--   unknownrcpts: with checkrecipients, sum a source's recent unknown
--               recipients (SELECT), record a session's (INSERT), expire rows
--               older than a day (DELETE); no UPDATE.
GRANT SELECT ON poppass TO qmaild;
GRANT SELECT ON sendas TO qmaild;
GRANT SELECT, INSERT, UPDATE ON sendcounts TO qmaild;
GRANT SELECT, INSERT, DELETE, UPDATE (at) ON authfailures TO qmaild;
GRANT SELECT, INSERT, DELETE ON unknownrcpts TO qmaild;

-- Optional: lets a successful login replace a deprecated hash (DES, MD5, SHA
-- crypt, bcrypt, plaintext) by the current default, with one log line
-- (`auth rehash user=...: md5_crypt -> argon2id ...`).  Without it the old
-- hash stays, logins still work, and each such login logs
-- `auth rehash skipped ...` naming this grant.
-- GRANT UPDATE (pw) ON poppass TO qmaild;

-- POP3 --------------------------------------------------------------------
-- qmail-esmtpd-checkpassword under qmail-popup connects as qmaild (started
-- as root by tcpserver, it takes qmaild's uid to connect): the grants above
-- cover it.  Under Dovecot it runs as Dovecot's auth user, `dovecot`, and
-- connects as the role of that name.  Once that role exists
-- (CREATE ROLE dovecot LOGIN), running this file again gives it what the
-- program reads and the failure counts, nothing else.  To let its logins
-- replace deprecated hashes too: GRANT UPDATE (pw) ON poppass TO dovecot;
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'dovecot') THEN
        GRANT SELECT (id, name, pw, active, sendlimit, sysuser, dir, hostname, ip)
            ON poppass TO dovecot;
        GRANT SELECT, INSERT, DELETE, UPDATE (at) ON authfailures TO dovecot;
    END IF;
END
$$;
