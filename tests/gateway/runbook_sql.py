"""SQL copied verbatim from the runbook (trailing spaces included), run by test_schema.py.

PART_4_3 is the psql heredoc of Step 4.3; PART_4_4 and PART_5_1 the -c arguments of Steps 4.4 and 5.1.
"""

PART_4_3 = """\
-- Check requests table
SELECT 
    id, 
    created_at, 
    request_id, 
    route, 
    model, 
    status_code,
    user_id,
    api_key
FROM requests 
ORDER BY created_at DESC 
LIMIT 5;

-- Check responses table
SELECT 
    r.id,
    r.created_at,
    r.latency_ms,
    r.prompt_tokens,
    r.completion_tokens,
    r.total_tokens,
    req.request_id,
    req.model
FROM responses r
JOIN requests req ON r.request_id_fk = req.id
ORDER BY r.created_at DESC
LIMIT 5;

-- Get summary statistics
SELECT 
    COUNT(*) as total_requests,
    COUNT(DISTINCT model) as unique_models,
    AVG(CASE WHEN status_code = 200 THEN 1.0 ELSE 0.0 END) * 100 as success_rate
FROM requests;
"""

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
