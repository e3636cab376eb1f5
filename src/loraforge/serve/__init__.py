"""Serve: an OpenAI-compatible, multi-tenant HTTP service over one base and many adapters.

Layout, in the order a request flows:
- `tenants`  : tenants.yaml, hashed API keys, which adapters each tenant may use;
- `http`     : the FastAPI app (routes, OpenAI schemas, limits, metrics, feedback); it knows an
               engine only through `engine.Engine`;
- `adapters` : registry lookup by name and the checks every load runs (base fingerprint, chat
               template hash, signature, tensor shapes), giving `engine.AdapterWeights`;
- `engine`   : the interface every engine implements, and its request/event types;
- `builtin`  : the built-in engine (continuous batching, mixed adapters in one forward);
- `peft_engine`: PEFT `set_adapter` per request, one request at a time (the benchmark baseline).
"""
