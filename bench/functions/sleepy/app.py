"""Sleeps 50 ms (a call to a slow backend), then answers: the step-load benchmark's function."""

import time


def handler(event, context):
    time.sleep(0.05)
    return {"slept_ms": 50}
