-- Runbook Part 7 ("Database Maintenance"), as tables: run by playbooks/maintenance.yml with
-- psql on the database host (read-only; :days is how many days of row counts to show).
\pset footer off
\echo '== Partitions: range (UTC), rows (estimate), table and index size'
SELECT tree.relid::regclass AS partition,
       replace(replace(regexp_replace(pg_get_expr(class.relpartbound, class.oid),
               'FOR VALUES FROM \((.*)\) TO \((.*)\)', '\1 .. \2'), '''', ''), ' 00:00:00+00', '') AS "range",
       greatest(class.reltuples, 0)::bigint AS "rows~",
       pg_size_pretty(pg_relation_size(tree.relid)) AS "table",
       pg_size_pretty(pg_indexes_size(tree.relid)) AS indexes
  FROM (SELECT * FROM pg_partition_tree('requests') UNION ALL SELECT * FROM pg_partition_tree('responses')) AS tree
  JOIN pg_class AS class ON class.oid = tree.relid
 WHERE tree.isleaf
 ORDER BY tree.relid::regclass::text;

\echo '== Oldest and newest partition (by lower bound; the default partition excluded)'
SELECT tree.parentrelid::regclass AS "table",
       min(tree.relid::regclass::text) AS oldest,
       max(tree.relid::regclass::text) AS newest,
       count(*) AS partitions
  FROM (SELECT * FROM pg_partition_tree('requests') UNION ALL SELECT * FROM pg_partition_tree('responses')) AS tree
  JOIN pg_class AS class ON class.oid = tree.relid
 WHERE tree.isleaf AND pg_get_expr(class.relpartbound, class.oid) <> 'DEFAULT'
 GROUP BY 1
 ORDER BY 1;

\echo '== Requests per day (the last maintenance_days days), with failures (status <> 200)'
SELECT date_trunc('day', created_at)::date AS day,
       count(*) AS requests,
       count(*) FILTER (WHERE status_code <> 200) AS failed
  FROM requests
 WHERE created_at > now() - make_interval(days => :days)
 GROUP BY 1
 ORDER BY 1;

\echo '== Long-running queries (> 5 minutes)'
SELECT pid, usename, now() - query_start AS duration, state, left(query, 120) AS query
  FROM pg_stat_activity
 WHERE (now() - query_start) > interval '5 minutes'
   AND state <> 'idle'
 ORDER BY duration DESC;

\echo '== Last vacuum and analyze of the log tables'
SELECT relname AS "table", n_live_tup AS live_rows, n_dead_tup AS dead_rows,
       greatest(last_vacuum, last_autovacuum) AS last_vacuum,
       greatest(last_analyze, last_autoanalyze) AS last_analyze
  FROM pg_stat_user_tables
 WHERE relname ~ '^(requests|responses)'
 ORDER BY relname;

\echo '== Database size'
SELECT current_database() AS database, pg_size_pretty(pg_database_size(current_database())) AS size;
