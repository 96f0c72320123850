-- What `legion gateway` keeps (see 0016_gateway.sql): usage per API key, recorded calls.

-- name: add_key_usage
INSERT INTO key_usage (key_id, calls, failed, replayed, prompt_tokens, completion_tokens,
                       cost_usd, unpriced_calls, updated_at)
VALUES (:key_id, :calls, :failed, :replayed, :prompt_tokens, :completion_tokens, :cost_usd,
        :unpriced_calls, :now)
ON CONFLICT (key_id) DO UPDATE SET
    calls = calls + excluded.calls,
    failed = failed + excluded.failed,
    replayed = replayed + excluded.replayed,
    prompt_tokens = prompt_tokens + excluded.prompt_tokens,
    completion_tokens = completion_tokens + excluded.completion_tokens,
    cost_usd = cost_usd + excluded.cost_usd,
    unpriced_calls = unpriced_calls + excluded.unpriced_calls,
    updated_at = max(updated_at, excluded.updated_at);

-- name: key_usage
SELECT key_id, calls, failed, replayed, prompt_tokens, completion_tokens, cost_usd,
       unpriced_calls, updated_at
FROM key_usage WHERE key_id = :key_id;

-- name: key_usages
SELECT key_id, calls, failed, replayed, prompt_tokens, completion_tokens, cost_usd,
       unpriced_calls, updated_at
FROM key_usage ORDER BY key_id;

-- name: gateway_call
SELECT request, output FROM gateway_calls WHERE key_id = :key_id AND task = :task AND step = :step;

-- name: record_gateway_call
-- The first answer recorded for a step stays; the caller reads back whichever it is.
INSERT INTO gateway_calls (key_id, task, step, request, output, created_at)
VALUES (:key_id, :task, :step, :request, :output, :now)
ON CONFLICT (key_id, task, step) DO NOTHING;

-- name: gateway_tasks
-- The calls recorded per task of one key, the tasks of the latest calls first.
SELECT task, count(*) FROM gateway_calls WHERE key_id = :key_id
GROUP BY task ORDER BY max(created_at) DESC, task LIMIT :limit;
