"""The link responses -> requests checked once per statement instead of once per row.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27

The foreign key ``responses (request_id_fk, created_at) -> requests (id, created_at) ON DELETE
CASCADE`` cost most of PostgreSQL's CPU per logged request: one referential-integrity query,
pruned across the partitions of ``requests``, and one row lock per inserted ``responses`` row
(writer benchmark, throwaway PostgreSQL 17: 0.041 ms of PostgreSQL CPU per row with it, 0.015
without). The same two guarantees, per statement:

- ``responses_link``: after each INSERT into responses, one anti-join over the statement's new
  rows (a transition table) refuses the whole statement if any has no requests row;
- ``requests_cascade``: after each DELETE from requests, the responses rows of the deleted
  requests rows are deleted (what ON DELETE CASCADE did).

Statements addressed to one partition directly (the maintenance job's moves and its DELETE on
the DEFAULT partitions) fire neither, like partition DDL; that job handles both tables itself.
The writer inserts a responses row only for the requests row its own statement just returned.
Static SQL: the module's check mode and --diff show what runs. Both tables are locked briefly.
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

UPGRADE = [
    "ALTER TABLE responses DROP CONSTRAINT fk_responses_request_id_fk_requests",
    """CREATE FUNCTION pglog_responses_link() RETURNS trigger LANGUAGE plpgsql AS $body$
BEGIN
    IF EXISTS (
        SELECT 1 FROM pglog_new_responses n
        WHERE NOT EXISTS (
            SELECT 1 FROM requests r WHERE r.id = n.request_id_fk AND r.created_at = n.created_at
        )
    ) THEN
        RAISE EXCEPTION 'a responses row has no requests row (request_id_fk, created_at)'
            USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN NULL;
END
$body$""",
    "CREATE TRIGGER responses_link AFTER INSERT ON responses "
    "REFERENCING NEW TABLE AS pglog_new_responses "
    "FOR EACH STATEMENT EXECUTE FUNCTION pglog_responses_link()",
    """CREATE FUNCTION pglog_requests_cascade() RETURNS trigger LANGUAGE plpgsql AS $body$
BEGIN
    DELETE FROM responses p USING pglog_old_requests o
    WHERE p.request_id_fk = o.id AND p.created_at = o.created_at;
    RETURN NULL;
END
$body$""",
    "CREATE TRIGGER requests_cascade AFTER DELETE ON requests "
    "REFERENCING OLD TABLE AS pglog_old_requests "
    "FOR EACH STATEMENT EXECUTE FUNCTION pglog_requests_cascade()",
]

DOWNGRADE = [
    "DROP TRIGGER requests_cascade ON requests",
    "DROP FUNCTION pglog_requests_cascade()",
    "DROP TRIGGER responses_link ON responses",
    "DROP FUNCTION pglog_responses_link()",
    "ALTER TABLE responses ADD CONSTRAINT fk_responses_request_id_fk_requests "
    "FOREIGN KEY (request_id_fk, created_at) REFERENCES requests (id, created_at) ON DELETE CASCADE",
]


def upgrade() -> None:
    for statement in UPGRADE:
        op.execute(statement)


def downgrade() -> None:
    for statement in DOWNGRADE:
        op.execute(statement)
