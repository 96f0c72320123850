-- legion schema, version 2 (PostgreSQL): what each task's LLM calls used.
-- {"prompt_tokens", "completion_tokens", "cost_usd", "llm_calls"}, replayed calls included.
ALTER TABLE tasks ADD COLUMN usage bytea;
