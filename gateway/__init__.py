"""The gateway: Lamina's HTTP edge.

Its modules follow a request: ``routes/`` (management API, direct invocation, function
URLs, health, metrics) → ``auth`` (API keys) → ``events`` (HTTP ⇄ API Gateway 2.0 events) →
``balancer`` (which invoker) → ``invokers`` (the gRPC calls). ``app`` composes the ASGI
application and ``server`` runs it with its background tasks.
"""
