"""Hello: answers over HTTP (API Gateway event) and to direct invocations (plain JSON event)."""

import json


def handler(event, context):
    name = event.get("name")
    if name is None and "requestContext" in event:  # an HTTP request: ?name=… or a JSON body
        name = (event.get("queryStringParameters") or {}).get("name")
        if name is None and event.get("body"):
            try:
                name = json.loads(event["body"]).get("name")
            except (ValueError, AttributeError):
                name = None
    print(f"greeting {name or 'world'}")
    return {
        "message": f"Hello, {name or 'world'}!",
        "function": context.function_name,
        "request_id": context.aws_request_id,
    }
