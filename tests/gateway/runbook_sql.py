"""SQL copied verbatim from the runbook (trailing spaces included), run by test_schema.py.

PART_4_3 is the psql heredoc of Step 4.3 (runbook_part_4_3.sql, also run by the smoke playbook);
PART_4_4 and PART_5_1 the -c arguments of Steps 4.4 and 5.1.
"""

from pathlib import Path

# A file of its own so that playbooks/smoke.yml runs the same bytes with psql.
PART_4_3 = (Path(__file__).parent / "runbook_part_4_3.sql").read_text()

PART_4_4 = """\
SELECT request_id, route, model, status_code, created_at 
FROM requests 
WHERE status_code != 200 
ORDER BY created_at DESC 
LIMIT 3;"""

PART_5_1 = """\
SELECT 
    COUNT(*) as total_requests,
    MIN(created_at) as first_request,
    MAX(created_at) as last_request,
    COUNT(CASE WHEN status_code = 200 THEN 1 END) as successful_requests
FROM requests 
WHERE created_at > NOW() - INTERVAL '5 minutes';"""
