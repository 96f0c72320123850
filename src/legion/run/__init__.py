"""The core: the runtime that submits and collects, the worker that leases, the runner
that runs one attempt, and the capacity shares they keep through the store."""
