"""Link each responses partition to the requests partition of the same range, not the parents.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28

Both tables are partitioned alike (same ranges, created together by litellm-pglog-maintain)
and the link contains the partition key, so a responses row and the requests row it references
always live in partitions of the same range. A foreign key between those two partitions makes
the same promise as one between the parents, at a fraction of the cost: PostgreSQL checks a
link to a partitioned table with a query that goes through partition routing for every row
(113 ms of a 166 ms merge of 5,000 requests, measured by EXPLAIN ANALYZE on PostgreSQL 17), one
to a plain table with an index probe (21 ms). ON DELETE CASCADE stays.

litellm-pglog-maintain links every partition pair it creates from now on (partitions.py). The
existing rows are checked as each link is added (one join per pair, under the upgrade's lock).
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

UNLINK_PARENTS = "ALTER TABLE responses DROP CONSTRAINT fk_responses_request_id_fk_requests"

# Pairs are matched by their partition bounds, as PostgreSQL prints them; a responses partition
# without a twin would leave rows unchecked, so it stops the upgrade instead.
LINK_PARTITIONS = """DO $migration$
DECLARE
    pair record;
BEGIN
    FOR pair IN
        SELECT rs.relname AS responses, rq.relname AS requests
        FROM pg_inherits i_rs
        JOIN pg_class rs ON rs.oid = i_rs.inhrelid
        LEFT JOIN (pg_inherits i_rq JOIN pg_class rq ON rq.oid = i_rq.inhrelid)
            ON i_rq.inhparent = 'requests'::regclass
            AND pg_get_expr(rq.relpartbound, rq.oid) = pg_get_expr(rs.relpartbound, rs.oid)
        WHERE i_rs.inhparent = 'responses'::regclass
    LOOP
        IF pair.requests IS NULL THEN
            RAISE EXCEPTION USING MESSAGE = 'partition ' || pair.responses
                || ' of responses has no partition of requests with the same range';
        END IF;
        EXECUTE 'ALTER TABLE ' || quote_ident(pair.responses) || ' ADD CONSTRAINT '
            || quote_ident('fk_' || pair.responses || '_requests')
            || ' FOREIGN KEY (request_id_fk, created_at) REFERENCES ' || quote_ident(pair.requests)
            || ' (id, created_at) ON DELETE CASCADE';
    END LOOP;
END
$migration$"""

UNLINK_PARTITIONS = """DO $migration$
DECLARE
    link record;
BEGIN
    FOR link IN
        SELECT c.conrelid::regclass::text AS partition, c.conname
        FROM pg_constraint c JOIN pg_inherits i ON i.inhrelid = c.conrelid
        WHERE c.contype = 'f' AND i.inhparent = 'responses'::regclass
    LOOP
        EXECUTE 'ALTER TABLE ' || link.partition || ' DROP CONSTRAINT ' || quote_ident(link.conname);
    END LOOP;
END
$migration$"""


def upgrade() -> None:
    op.execute(UNLINK_PARENTS)
    op.execute(LINK_PARTITIONS)


def downgrade() -> None:
    op.execute(UNLINK_PARTITIONS)
    op.execute(
        "ALTER TABLE responses ADD CONSTRAINT fk_responses_request_id_fk_requests FOREIGN KEY "
        "(request_id_fk, created_at) REFERENCES requests (id, created_at) ON DELETE CASCADE"
    )
