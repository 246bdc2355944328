"""The gateway's HTTP routes, one module per area: functions (management), invoke (direct
invocation), http (function URLs), health, metrics."""
