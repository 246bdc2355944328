"""Lamina: a self-hosted function-as-a-service platform on the AWS Lambda model.

This package holds what every process shares: domain types and errors (``lamina.core``),
the wire stubs (``lamina.rpc``) and their conversion (``lamina.wire``), the controller
client, the HTTP client and the CLI, which is the only composition root.
"""

__version__ = "0.1.0"
