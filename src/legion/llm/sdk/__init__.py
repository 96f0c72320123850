"""The official SDKs on legion: ``ctx.llm.openai()`` and ``ctx.llm.anthropic()``.

Each returns the SDK's own async client (``openai.AsyncOpenAI``,
``anthropic.AsyncAnthropic``) whose HTTP transport does not open a connection: it
reads the request the SDK wrote, makes it a ``ctx.llm.chat`` (or ``ctx.llm.embed``)
call — the route, its capacity, the client's retry policy, a recorded step, usage and
cost on the task — and writes the answer back in the SDK's wire format::

    SDK call ─► LegionTransport.handle_async_request(request)
                  ├── openai_wire / anthropic_wire: request JSON ─► messages, params
                  ├── ctx.llm.chat(...)              recorded once per task
                  └── the completion as JSON, or as the events of a stream

A task that runs again gets its recorded completions back as the same bytes: the
answer is rendered from the recorded completion alone, so nothing in it (ids
included) depends on when it was rendered. A stream is passed on piece by piece as
the provider sends it (`live`, `legion.llm.deltas`); replayed, it comes whole, in
events the SDK parses to the same completion (its id depends on the request alone).
The SDK's own retries are off (``max_retries=0``): legion's policy is the only one.

The wire modules (`openai_wire`, `anthropic_wire`) need no SDK: ``legion gateway``
speaks OpenAI's format with them. `transport` and `clients` need ``httpx2`` (which the
SDKs bring) and are imported only when a client is asked for.
"""
