"""The controller: the only writer of Lamina's durable state.

It owns the database (functions, API keys, the invoker registry, logs), the code blobs,
and serves them over gRPC (``proto/lamina/v1/controller.proto``). The file tree is the
table of contents: ``store`` (SQLAlchemy), ``blobs`` (content-addressed files), ``keys``
(minting and checking API keys), ``service`` (the gRPC servicer), ``server`` (the process),
``metrics`` and ``migrate`` (Alembic).
"""
