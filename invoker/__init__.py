"""The invoker: runs function code in sandboxed worker processes and serves `Invoker` over gRPC."""
