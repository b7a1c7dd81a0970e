-- qmail-esmtpd: bring a database made from the 2002 qmail SQL-auth article's
-- tables (poppass and sendcounts without keys, constraints or NOT NULLs, pw a
-- varchar(20)) to sql/schema.sql, in place, keeping every row.
--
-- Run it as the owner of the tables, then load schema.sql (it adds the tables
-- that came later, such as sendas, and leaves the rest alone), then the grants:
--     psql -v ON_ERROR_STOP=1 -1 -d mail -f sql/upgrade-2002.sql
--     psql -v ON_ERROR_STOP=1 -d mail -f sql/schema.sql
--     psql -v ON_ERROR_STOP=1 -d mail -f sql/grants.sql
-- (after `CREATE ROLE qmaild LOGIN` if the role does not exist yet).
--
-- What it does, each step only where the database still needs it, so a second
-- run changes nothing:
--   poppass:    varchar columns become text (modern hashes are ~100 chars);
--               id gets an identity (or keeps its serial default) starting
--               after max(id), NULL ids are numbered from it, id becomes the
--               primary key; name becomes NOT NULL UNIQUE; adds
--               `active boolean NOT NULL DEFAULT true` and
--               `sendlimit integer CHECK (sendlimit >= 0)`.
--   sendcounts: NULL count/total_count become 0 and NULL last_send today;
--               NOT NULL with schema.sql's defaults; total_count becomes
--               bigint; CHECK (count >= 0); id becomes the primary key and a
--               foreign key to poppass(id) ON DELETE CASCADE.
--
-- Rows are never deleted.  If the data cannot take a constraint as it is
-- (NULL or duplicate names, duplicate ids, NULL passwords, send counts for
-- ids that are not in poppass...), it stops before changing anything, with
-- an error naming every problem and the offending values; fix those rows by
-- hand and run it again.  It is one DO block, so it is atomic however it is
-- run (-1 makes that explicit), and it locks both tables while it works.

DO $upgrade$
DECLARE
    pp        regclass := to_regclass('poppass');
    sc        regclass := to_regclass('sendcounts');
    problems  text[] := '{}';
    done      text[] := '{}';
    missing   text;
    n         bigint;
    vals      text;
    pk        record;
    col       record;
    attnum_id smallint;
    max_id    bigint;
    seq       regclass;
    next_id   bigint;
    fk_found  boolean;
BEGIN
    IF pp IS NULL THEN
        RAISE EXCEPTION 'upgrade-2002: there is no table poppass in the search path (%)',
            current_setting('search_path')
            USING HINT = 'For a new database load sql/schema.sql instead.';
    END IF;
    SELECT string_agg(c, ', ') INTO missing FROM unnest(ARRAY['id', 'name', 'pw']) AS c
    WHERE NOT EXISTS (SELECT 1 FROM pg_attribute
                      WHERE attrelid = pp AND attname = c AND attnum > 0 AND NOT attisdropped);
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION 'upgrade-2002: poppass has no column %: not the 2002 layout', missing;
    END IF;
    IF sc IS NULL THEN  -- made in the 2002 shape, then upgraded like any other
        CREATE TABLE sendcounts (id int, last_send date, count int, total_count int);
        sc := 'sendcounts'::regclass;
        done := done || 'created sendcounts'::text;
    END IF;
    SELECT string_agg(c, ', ') INTO missing
    FROM unnest(ARRAY['id', 'last_send', 'count', 'total_count']) AS c
    WHERE NOT EXISTS (SELECT 1 FROM pg_attribute
                      WHERE attrelid = sc AND attname = c AND attnum > 0 AND NOT attisdropped);
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION 'upgrade-2002: sendcounts has no column %: not the 2002 layout', missing;
    END IF;

    -- Nobody reads half-checked data or writes behind the checks.
    LOCK TABLE poppass, sendcounts IN ACCESS EXCLUSIVE MODE;

    ---------------------------------------------------------------- checks
    -- Every problem is collected first, so one run reports them all.

    SELECT count(*), array_to_string((array_agg(coalesce(id::text, 'NULL') ORDER BY id))[1:20], ', ')
    INTO n, vals FROM poppass WHERE name IS NULL;
    IF n > 0 THEN
        problems := problems || format('poppass: %s row(s) with a NULL name, id: %s%s',
                                       n, vals, CASE WHEN n > 20 THEN ', ...' END);
    END IF;

    SELECT count(*), array_to_string((array_agg(format('%L (%s rows)', name, k) ORDER BY name))[1:20], ', ')
    INTO n, vals
    FROM (SELECT name, count(*) AS k FROM poppass WHERE name IS NOT NULL
          GROUP BY name HAVING count(*) > 1) AS d;
    IF n > 0 THEN
        problems := problems || format('poppass: %s duplicate name(s): %s%s',
                                       n, vals, CASE WHEN n > 20 THEN ', ...' END);
    END IF;

    SELECT count(*), array_to_string((array_agg(format('%s (%s rows)', id, k) ORDER BY id))[1:20], ', ')
    INTO n, vals
    FROM (SELECT id, count(*) AS k FROM poppass WHERE id IS NOT NULL
          GROUP BY id HAVING count(*) > 1) AS d;
    IF n > 0 THEN
        problems := problems || format('poppass: %s duplicate id(s): %s%s',
                                       n, vals, CASE WHEN n > 20 THEN ', ...' END);
    END IF;

    SELECT count(*), array_to_string((array_agg(format('%L (id %s)', name, coalesce(id::text, 'NULL'))
                                                 ORDER BY name))[1:20], ', ')
    INTO n, vals FROM poppass WHERE pw IS NULL;
    IF n > 0 THEN
        problems := problems || format(
            'poppass: %s user(s) with a NULL pw: %s%s (set a hash, or ''*'' and active = false to lock the account)',
            n, vals, CASE WHEN n > 20 THEN ', ...' END);
    END IF;

    SELECT * INTO pk FROM pg_constraint WHERE conrelid = pp AND contype = 'p';
    IF FOUND AND pg_get_constraintdef(pk.oid) <> 'PRIMARY KEY (id)' THEN
        problems := problems || format('poppass: has primary key %I %s, expected PRIMARY KEY (id)',
                                       pk.conname, pg_get_constraintdef(pk.oid));
    END IF;

    SELECT * INTO col FROM pg_attribute WHERE attrelid = pp AND attname = 'active' AND NOT attisdropped;
    IF FOUND THEN
        IF col.atttypid <> 'boolean'::regtype THEN
            problems := problems || format('poppass: column active is %s, expected boolean',
                                           format_type(col.atttypid, col.atttypmod));
        ELSE
            EXECUTE 'SELECT count(*), array_to_string((array_agg(format(''%L'', name) ORDER BY name))[1:20], '', '')
                     FROM poppass WHERE active IS NULL' INTO n, vals;
            IF n > 0 THEN
                problems := problems || format('poppass: %s user(s) with a NULL active: %s%s',
                                               n, vals, CASE WHEN n > 20 THEN ', ...' END);
            END IF;
        END IF;
    END IF;

    SELECT * INTO col FROM pg_attribute WHERE attrelid = pp AND attname = 'sendlimit' AND NOT attisdropped;
    IF FOUND THEN
        IF col.atttypid NOT IN ('smallint'::regtype, 'integer'::regtype, 'bigint'::regtype) THEN
            problems := problems || format('poppass: column sendlimit is %s, expected integer',
                                           format_type(col.atttypid, col.atttypmod));
        ELSE
            EXECUTE 'SELECT count(*), array_to_string((array_agg(format(''%L'', name) ORDER BY name))[1:20], '', '')
                     FROM poppass WHERE sendlimit < 0' INTO n, vals;
            IF n > 0 THEN
                problems := problems || format('poppass: %s user(s) with a negative sendlimit: %s%s',
                                               n, vals, CASE WHEN n > 20 THEN ', ...' END);
            END IF;
        END IF;
    END IF;

    SELECT count(*) INTO n FROM sendcounts WHERE id IS NULL;
    IF n > 0 THEN
        problems := problems || format('sendcounts: %s row(s) with a NULL id', n);
    END IF;

    SELECT count(*), array_to_string((array_agg(format('%s (%s rows)', id, k) ORDER BY id))[1:20], ', ')
    INTO n, vals
    FROM (SELECT id, count(*) AS k FROM sendcounts WHERE id IS NOT NULL
          GROUP BY id HAVING count(*) > 1) AS d;
    IF n > 0 THEN
        problems := problems || format('sendcounts: %s duplicate id(s): %s%s',
                                       n, vals, CASE WHEN n > 20 THEN ', ...' END);
    END IF;

    SELECT count(*), array_to_string((array_agg(DISTINCT s.id::text))[1:20], ', ')
    INTO n, vals
    FROM sendcounts s WHERE s.id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM poppass p WHERE p.id = s.id);
    IF n > 0 THEN
        problems := problems || format('sendcounts: %s row(s) for ids not in poppass: %s%s',
                                       n, vals, CASE WHEN n > 20 THEN ', ...' END);
    END IF;

    SELECT count(*), array_to_string((array_agg(format('%s (count %s)', id, count) ORDER BY id))[1:20], ', ')
    INTO n, vals FROM sendcounts WHERE count < 0;
    IF n > 0 THEN
        problems := problems || format('sendcounts: %s row(s) with a negative count, id: %s%s',
                                       n, vals, CASE WHEN n > 20 THEN ', ...' END);
    END IF;

    SELECT * INTO pk FROM pg_constraint WHERE conrelid = sc AND contype = 'p';
    IF FOUND AND pg_get_constraintdef(pk.oid) <> 'PRIMARY KEY (id)' THEN
        problems := problems || format('sendcounts: has primary key %I %s, expected PRIMARY KEY (id)',
                                       pk.conname, pg_get_constraintdef(pk.oid));
    END IF;

    IF cardinality(problems) > 0 THEN
        RAISE EXCEPTION E'upgrade-2002: nothing changed; these rows need fixing by hand first:\n  %',
            array_to_string(problems, E'\n  ')
            USING HINT = 'Rows are never deleted or merged by this script; fix them, then run it again.';
    END IF;

    --------------------------------------------------------------- poppass
    -- Text everywhere: a varchar(20) cannot hold an argon2 hash.
    FOR col IN SELECT attname, format_type(atttypid, atttypmod) AS type FROM pg_attribute
               WHERE attrelid = pp AND attnum > 0 AND NOT attisdropped
                 AND atttypid IN ('varchar'::regtype, 'bpchar'::regtype)
               ORDER BY attnum
    LOOP
        EXECUTE format('ALTER TABLE poppass ALTER COLUMN %I TYPE text', col.attname);
        done := done || format('poppass.%s %s -> text', col.attname, col.type);
    END LOOP;

    -- id: an identity like schema.sql's, unless it already has a default (serial).
    SELECT * INTO col FROM pg_attribute WHERE attrelid = pp AND attname = 'id';
    attnum_id := col.attnum;
    IF col.attidentity = '' AND NOT col.atthasdef THEN
        SELECT coalesce(max(id), 0) INTO max_id FROM poppass;
        UPDATE poppass SET id = max_id + f.k
        FROM (SELECT ctid AS row, row_number() OVER (ORDER BY ctid) AS k
              FROM poppass WHERE id IS NULL) AS f
        WHERE poppass.ctid = f.row;
        GET DIAGNOSTICS n = ROW_COUNT;
        IF n > 0 THEN
            done := done || format('poppass: numbered %s NULL id(s) from %s', n, max_id + 1);
        END IF;
        SELECT coalesce(max(id), 0) INTO max_id FROM poppass;
        ALTER TABLE poppass ALTER COLUMN id SET NOT NULL;
        EXECUTE format('ALTER TABLE poppass ALTER COLUMN id ADD GENERATED BY DEFAULT AS IDENTITY'
                       ' (START WITH %s)', max_id + 1);
        done := done || format('poppass.id: identity starting at %s', max_id + 1);
    ELSE
        -- Keep the sequence ahead of ids inserted by hand; never move it back.
        seq := pg_get_serial_sequence('poppass', 'id')::regclass;
        IF seq IS NOT NULL THEN
            SELECT coalesce(max(id), 0) INTO max_id FROM poppass;
            SELECT coalesce(pg_sequence_last_value(seq) + s.seqincrement, s.seqstart)
            INTO next_id FROM pg_sequence s WHERE s.seqrelid = seq;
            IF next_id <= max_id THEN
                PERFORM setval(seq, max_id);
                done := done || format('poppass.id: sequence %s moved past %s', seq, max_id);
            END IF;
        END IF;
        UPDATE poppass SET id = DEFAULT WHERE id IS NULL;
        GET DIAGNOSTICS n = ROW_COUNT;
        IF n > 0 THEN
            done := done || format('poppass: numbered %s NULL id(s) from the id default', n);
        END IF;
        IF NOT col.attnotnull THEN
            ALTER TABLE poppass ALTER COLUMN id SET NOT NULL;
            done := done || 'poppass.id: NOT NULL'::text;
        END IF;
    END IF;

    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = pp AND contype = 'p') THEN
        ALTER TABLE poppass ADD CONSTRAINT poppass_pkey PRIMARY KEY (id);
        done := done || 'poppass: PRIMARY KEY (id)'::text;
    END IF;

    -- name: NOT NULL UNIQUE (a plain unique index on name also does); pw: NOT NULL.
    IF NOT (SELECT attnotnull FROM pg_attribute WHERE attrelid = pp AND attname = 'name') THEN
        ALTER TABLE poppass ALTER COLUMN name SET NOT NULL;
        done := done || 'poppass.name: NOT NULL'::text;
    END IF;
    IF NOT (SELECT attnotnull FROM pg_attribute WHERE attrelid = pp AND attname = 'pw') THEN
        ALTER TABLE poppass ALTER COLUMN pw SET NOT NULL;
        done := done || 'poppass.pw: NOT NULL'::text;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_index i JOIN pg_attribute a
                       ON a.attrelid = pp AND a.attname = 'name' AND i.indkey[0] = a.attnum
                   WHERE i.indrelid = pp AND i.indisunique AND i.indnkeyatts = 1
                     AND i.indpred IS NULL AND i.indexprs IS NULL) THEN
        ALTER TABLE poppass ADD CONSTRAINT poppass_name_key UNIQUE (name);
        done := done || 'poppass: UNIQUE (name)'::text;
    END IF;

    IF NOT EXISTS (SELECT 1 FROM pg_attribute
                   WHERE attrelid = pp AND attname = 'active' AND NOT attisdropped) THEN
        ALTER TABLE poppass ADD COLUMN active boolean NOT NULL DEFAULT true;
        done := done || 'poppass: added active'::text;
    ELSE
        IF NOT (SELECT attnotnull FROM pg_attribute WHERE attrelid = pp AND attname = 'active') THEN
            ALTER TABLE poppass ALTER COLUMN active SET NOT NULL;
            done := done || 'poppass.active: NOT NULL'::text;
        END IF;
        IF (SELECT pg_get_expr(d.adbin, d.adrelid) FROM pg_attrdef d JOIN pg_attribute a
                ON a.attrelid = d.adrelid AND a.attnum = d.adnum
            WHERE d.adrelid = pp AND a.attname = 'active') IS DISTINCT FROM 'true' THEN
            ALTER TABLE poppass ALTER COLUMN active SET DEFAULT true;
            done := done || 'poppass.active: DEFAULT true'::text;
        END IF;
    END IF;

    IF NOT EXISTS (SELECT 1 FROM pg_attribute
                   WHERE attrelid = pp AND attname = 'sendlimit' AND NOT attisdropped) THEN
        ALTER TABLE poppass ADD COLUMN sendlimit integer
            CONSTRAINT poppass_sendlimit_check CHECK (sendlimit >= 0);
        done := done || 'poppass: added sendlimit'::text;
    ELSIF NOT EXISTS (SELECT 1 FROM pg_constraint c JOIN pg_attribute a
                          ON a.attrelid = pp AND a.attname = 'sendlimit'
                      WHERE c.conrelid = pp AND c.contype = 'c' AND c.conkey = ARRAY[a.attnum]) THEN
        ALTER TABLE poppass ADD CONSTRAINT poppass_sendlimit_check CHECK (sendlimit >= 0);
        done := done || 'poppass: CHECK (sendlimit >= 0)'::text;
    END IF;

    ------------------------------------------------------------ sendcounts
    UPDATE sendcounts SET count = coalesce(count, 0), total_count = coalesce(total_count, 0),
                          last_send = coalesce(last_send, current_date)
    WHERE count IS NULL OR total_count IS NULL OR last_send IS NULL;
    GET DIAGNOSTICS n = ROW_COUNT;
    IF n > 0 THEN
        done := done || format('sendcounts: filled NULL counts/dates in %s row(s)', n);
    END IF;

    IF (SELECT atttypid FROM pg_attribute WHERE attrelid = sc AND attname = 'total_count')
       IN ('smallint'::regtype, 'integer'::regtype) THEN
        ALTER TABLE sendcounts ALTER COLUMN total_count TYPE bigint;
        done := done || 'sendcounts.total_count -> bigint'::text;
    END IF;

    FOR col IN SELECT a.attname, a.attnotnull, pg_get_expr(d.adbin, d.adrelid) AS def,
                      v.want
               FROM (VALUES ('id', NULL), ('last_send', 'CURRENT_DATE'),
                            ('count', '0'), ('total_count', '0')) AS v (name, want)
               JOIN pg_attribute a ON a.attrelid = sc AND a.attname = v.name
               LEFT JOIN pg_attrdef d ON d.adrelid = sc AND d.adnum = a.attnum
               ORDER BY a.attnum
    LOOP
        IF NOT col.attnotnull THEN
            EXECUTE format('ALTER TABLE sendcounts ALTER COLUMN %I SET NOT NULL', col.attname);
            done := done || format('sendcounts.%s: NOT NULL', col.attname);
        END IF;
        IF col.want IS NOT NULL AND col.def IS DISTINCT FROM col.want THEN
            EXECUTE format('ALTER TABLE sendcounts ALTER COLUMN %I SET DEFAULT %s',
                           col.attname, col.want);
            done := done || format('sendcounts.%s: DEFAULT %s', col.attname, col.want);
        END IF;
    END LOOP;

    IF NOT EXISTS (SELECT 1 FROM pg_constraint c JOIN pg_attribute a
                       ON a.attrelid = sc AND a.attname = 'count'
                   WHERE c.conrelid = sc AND c.contype = 'c' AND c.conkey = ARRAY[a.attnum]) THEN
        ALTER TABLE sendcounts ADD CONSTRAINT sendcounts_count_check CHECK (count >= 0);
        done := done || 'sendcounts: CHECK (count >= 0)'::text;
    END IF;

    IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conrelid = sc AND contype = 'p') THEN
        ALTER TABLE sendcounts ADD CONSTRAINT sendcounts_pkey PRIMARY KEY (id);
        done := done || 'sendcounts: PRIMARY KEY (id)'::text;
    END IF;

    -- The foreign key, with the cascade `qmail-esmtpd-user del` relies on.
    SELECT c.* INTO pk FROM pg_constraint c JOIN pg_attribute a ON a.attrelid = sc AND a.attname = 'id'
    WHERE c.conrelid = sc AND c.contype = 'f' AND c.confrelid = pp
      AND c.conkey = ARRAY[a.attnum] AND c.confkey = ARRAY[attnum_id];
    fk_found := FOUND;
    IF fk_found AND pk.confdeltype <> 'c' THEN
        EXECUTE format('ALTER TABLE sendcounts DROP CONSTRAINT %I', pk.conname);
        done := done || format('sendcounts: dropped %I (no ON DELETE CASCADE)', pk.conname);
    END IF;
    IF NOT fk_found OR pk.confdeltype <> 'c' THEN
        ALTER TABLE sendcounts ADD CONSTRAINT sendcounts_id_fkey
            FOREIGN KEY (id) REFERENCES poppass (id) ON DELETE CASCADE;
        done := done || 'sendcounts: FOREIGN KEY (id) REFERENCES poppass (id) ON DELETE CASCADE'::text;
    END IF;

    IF cardinality(done) = 0 THEN
        RAISE NOTICE 'upgrade-2002: already up to date, nothing changed';
    ELSE
        RAISE NOTICE E'upgrade-2002: done:\n  %', array_to_string(done, E'\n  ');
    END IF;
END
$upgrade$;
