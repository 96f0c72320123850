-- What `legion gateway` keeps (see 0016_gateway.sql): usage per API key, recorded calls.

-- name: add_key_usage
INSERT INTO key_usage (key_id, calls, failed, replayed, prompt_tokens, completion_tokens,
                       cost_usd, unpriced_calls, updated_at)
VALUES (%(key_id)s, %(calls)s, %(failed)s, %(replayed)s, %(prompt_tokens)s,
        %(completion_tokens)s, %(cost_usd)s, %(unpriced_calls)s, %(now)s)
ON CONFLICT (key_id) DO UPDATE SET
    calls = key_usage.calls + excluded.calls,
    failed = key_usage.failed + excluded.failed,
    replayed = key_usage.replayed + excluded.replayed,
    prompt_tokens = key_usage.prompt_tokens + excluded.prompt_tokens,
    completion_tokens = key_usage.completion_tokens + excluded.completion_tokens,
    cost_usd = key_usage.cost_usd + excluded.cost_usd,
    unpriced_calls = key_usage.unpriced_calls + excluded.unpriced_calls,
    updated_at = greatest(key_usage.updated_at, excluded.updated_at);

-- name: key_usage
SELECT key_id, calls, failed, replayed, prompt_tokens, completion_tokens, cost_usd,
       unpriced_calls, updated_at
FROM key_usage WHERE key_id = %(key_id)s;

-- name: key_usages
SELECT key_id, calls, failed, replayed, prompt_tokens, completion_tokens, cost_usd,
       unpriced_calls, updated_at
FROM key_usage ORDER BY key_id;

-- name: gateway_call
SELECT request, output FROM gateway_calls
WHERE key_id = %(key_id)s AND task = %(task)s AND step = %(step)s;

-- name: record_gateway_call
-- The first answer recorded for a step stays; the caller reads back whichever it is.
INSERT INTO gateway_calls (key_id, task, step, request, output, created_at)
VALUES (%(key_id)s, %(task)s, %(step)s, %(request)s, %(output)s, %(now)s)
ON CONFLICT (key_id, task, step) DO NOTHING;

-- name: gateway_tasks
-- The calls recorded per task of one key, the tasks of the latest calls first.
SELECT task, count(*) FROM gateway_calls WHERE key_id = %(key_id)s
GROUP BY task ORDER BY max(created_at) DESC, task LIMIT %(limit)s;
