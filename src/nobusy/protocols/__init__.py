"""Client protocols at the edge: each speaks its wire format, the rest of nobusy one model.

The internal request is the OpenAI chat body (``nobusy.schema``: a typed ``ChatRequest`` for
nobusy's decisions, the dict that goes upstream) and the internal answer is a stream of
``chat.completion.chunk`` dicts, which every upstream kind already yields. A client protocol
is an adapter at the edge: it parses its body into the internal request, and writes the
internal chunks in its own wire format (an ``Encoder`` for streams, ``render`` for a whole
answer) and nobusy's errors in its own shape (``protocols.errors``). Everything between —
admission, guard and PII, routing, failover, continuation, usage and audit — is
``protocols.pipeline``, written once.

``openai_chat``: OpenAI chat completions (the internal model itself, so the adapter is thin);
``anthropic_messages`` and ``anthropic_events``: Anthropic's Messages API, in and out.
"""
