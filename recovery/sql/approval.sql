-- Two-person approval: the functions that are the only way to write its tables.
--
-- This text is composed with psycopg.sql before it runs: every {s} becomes the
-- quoted schema identifier and {s_lit} the schema name as a string literal.
-- Literal braces are doubled.  Everything here is idempotent: `recovery init`
-- runs it on every call (schema.py runs the files in order: tables, capture,
-- guard, approval, grants).

-- Two-person approval (version 3): the only way to write the approval tables.
-- SECURITY DEFINER, so a role granted EXECUTE on them and nothing on the tables can
-- request, approve, refuse or consume an approval, but never forge one: each records
-- session_user (the login role, which SET ROLE does not change) and the time.
-- A request is for one exact plan, by its SHA-256 (plan_hash); an approval is for
-- that hash; authorize() consumes the request in the transaction that applies the
-- operation, so an apply that fails leaves it unconsumed.  For a refused request,
-- executed_at and executed_by say when and by whom it was refused.
-- Errors: SQLSTATE RC002 approval still needed (the CLI exits 3), RC003 no such
-- request, RC004 not possible on this request.
CREATE OR REPLACE FUNCTION {s}.request_approval(kind text, plan jsonb, plan_hash text,
                                                nrows bigint, ntables int)
RETURNS bigint LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    id bigint;
BEGIN
    IF kind IS NULL OR plan IS NULL OR plan_hash IS NULL OR nrows IS NULL OR ntables IS NULL THEN
        RAISE EXCEPTION 'recovery: an approval request needs a kind, a plan, its hash and its counts'
            USING ERRCODE = 'RC004';
    END IF;
    -- The same plan asked twice by the same user is one request, also when two
    -- sessions ask at once.
    PERFORM pg_advisory_xact_lock(hashtext('recovery-approval:' || request_approval.plan_hash));
    SELECT r.req_id INTO id FROM {s}.approval_requests r
    WHERE r.kind = request_approval.kind AND r.plan_hash = request_approval.plan_hash
      AND r.requested_by = session_user::text AND r.status IN ('pending', 'approved')
    ORDER BY r.req_id LIMIT 1;
    IF id IS NOT NULL THEN
        RETURN id;
    END IF;
    INSERT INTO {s}.approval_requests (kind, plan, plan_hash, rows, tables, required,
                                       requested_by)
    VALUES (request_approval.kind, request_approval.plan, request_approval.plan_hash, nrows,
            ntables, greatest(coalesce((SELECT m.value::int FROM {s}.meta m
                                        WHERE m.key = 'approvals_required'), 1), 1),
            session_user)
    RETURNING req_id INTO id;
    RETURN id;
END
$fn$;

-- Request req, locked for the rest of the calling transaction; RC003 when there is
-- none.  For approve(), refuse_approval() and authorize(), which run as the owner
-- (EXECUTE is revoked from PUBLIC with every function of the schema).
CREATE OR REPLACE FUNCTION {s}._locked_request(req bigint) RETURNS {s}.approval_requests
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    r  {s}.approval_requests;
BEGIN
    SELECT * INTO r FROM {s}.approval_requests x WHERE x.req_id = req FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'recovery: no approval request %', req USING ERRCODE = 'RC003',
            HINT = '`recovery approve --list` lists the open ones';
    END IF;
    RETURN r;
END
$fn$;

-- Records session_user's approval of request req for the plan whose hash the approver
-- saw; returns the request's status ('approved' once enough users other than the
-- requester approved it).  Approving twice is a no-op.
CREATE OR REPLACE FUNCTION {s}.approve(req bigint, hash text) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    r  {s}.approval_requests;
    n  bigint;
BEGIN
    r := {s}._locked_request(req);
    IF r.status NOT IN ('pending', 'approved') THEN
        RAISE EXCEPTION 'recovery: approval request % is % already: it can no longer be approved',
            req, r.status USING ERRCODE = 'RC004';
    END IF;
    IF hash IS DISTINCT FROM r.plan_hash THEN
        RAISE EXCEPTION 'recovery: the plan changed: approval request % is for plan %, not %',
            req, left(r.plan_hash, 12), left(coalesce(hash, '(none)'), 12) USING ERRCODE = 'RC004';
    END IF;
    IF session_user::text = r.requested_by THEN
        RAISE EXCEPTION 'recovery: approval request % was requested by %: an approval by the user who requested the operation does not count',
            req, r.requested_by USING ERRCODE = 'RC002',
            HINT = 'another database user (their own login role) must approve it';
    END IF;
    INSERT INTO {s}.approvals (req_id, approved_by, plan_hash) VALUES (req, session_user, hash)
    ON CONFLICT (req_id, approved_by) DO NOTHING;
    SELECT count(*) INTO n FROM {s}.approvals a
    WHERE a.req_id = req AND a.plan_hash = r.plan_hash AND a.approved_by <> r.requested_by;
    IF r.status = 'pending' AND n >= r.required THEN
        UPDATE {s}.approval_requests x SET status = 'approved' WHERE x.req_id = req;
        r.status := 'approved';
    END IF;
    RETURN r.status;
END
$fn$;

-- Closes request req without running it (by the requester, or by an approver).
CREATE OR REPLACE FUNCTION {s}.refuse_approval(req bigint) RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    r  {s}.approval_requests;
BEGIN
    r := {s}._locked_request(req);
    IF r.status NOT IN ('pending', 'approved') THEN
        RAISE EXCEPTION 'recovery: approval request % is % already: it can no longer be refused',
            req, r.status USING ERRCODE = 'RC004';
    END IF;
    UPDATE {s}.approval_requests x SET status = 'refused', executed_at = clock_timestamp(),
           executed_by = session_user
    WHERE x.req_id = req;
    RETURN 'refused';
END
$fn$;

-- Called by the transaction that applies the operation, before it writes: raises
-- unless request req is approved, for this very plan, by enough users other than the
-- requester and the user running it; then marks it executed (one use).
CREATE OR REPLACE FUNCTION {s}.authorize(req bigint, hash text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    r  {s}.approval_requests;
    n  bigint;
BEGIN
    r := {s}._locked_request(req);
    IF r.status = 'executed' THEN
        RAISE EXCEPTION 'recovery: approval request % was used already (by % at %): an approval is good for one run',
            req, r.executed_by, r.executed_at USING ERRCODE = 'RC002';
    END IF;
    IF r.status = 'refused' THEN
        RAISE EXCEPTION 'recovery: approval request % was refused (by % at %)',
            req, r.executed_by, r.executed_at USING ERRCODE = 'RC002';
    END IF;
    IF hash IS DISTINCT FROM r.plan_hash THEN
        RAISE EXCEPTION 'recovery: the plan changed since it was approved: it needs a new approval (request % is for plan %, this is plan %)',
            req, left(r.plan_hash, 12), left(coalesce(hash, '(none)'), 12) USING ERRCODE = 'RC002';
    END IF;
    IF r.status <> 'approved' THEN
        RAISE EXCEPTION 'recovery: approval request % is %: it is not approved yet', req, r.status
            USING ERRCODE = 'RC002';
    END IF;
    SELECT count(*) INTO n FROM {s}.approvals a
    WHERE a.req_id = req AND a.plan_hash = r.plan_hash
      AND a.approved_by NOT IN (r.requested_by, session_user::text);
    IF n < r.required THEN
        RAISE EXCEPTION 'recovery: approval request % has % approval(s) by users other than its requester and %, % needed: an approval by the user who runs the operation does not count',
            req, n, session_user, r.required USING ERRCODE = 'RC002';
    END IF;
    UPDATE {s}.approval_requests x SET status = 'executed', executed_at = clock_timestamp(),
           executed_by = session_user
    WHERE x.req_id = req;
END
$fn$;
