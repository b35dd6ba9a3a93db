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
