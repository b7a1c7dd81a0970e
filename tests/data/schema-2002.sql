-- The tables of the 2002 qmail SQL-auth article, as its readers created them:
-- no keys, no constraints, everything nullable, pw sized for a DES crypt hash.
-- A fixture for tests/test_upgrade_2002.py (sql/upgrade-2002.sql starts here).
CREATE TABLE poppass (id int, name varchar(32), pw varchar(20), sysuser varchar(32), hostname varchar(64), ip varchar(16), dir varchar(128));
CREATE TABLE sendcounts (id int, last_send date, count int, total_count int);
