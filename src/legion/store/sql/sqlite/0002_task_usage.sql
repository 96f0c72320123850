-- legion schema, version 2 (SQLite): what each task's LLM calls used.
-- {"prompt_tokens", "completion_tokens", "cost_usd", "llm_calls"}, replayed calls included.
ALTER TABLE tasks ADD COLUMN usage BLOB;
