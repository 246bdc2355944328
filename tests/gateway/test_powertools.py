"""aws-lambda-powertools' APIGatewayHttpResolver runs unchanged on the gateway's events.

The resolver is what many real Lambda HTTP handlers are written with; feeding it our event
and turning its return value back with our response rules is the round trip a function
behind ``/function/<name>`` goes through (the stack test runs it in a real worker too).
"""

from __future__ import annotations

import base64
import json
from types import SimpleNamespace

from gateway.events import HttpRequest, http_event, http_response


def make_app():  # type: ignore[no-untyped-def]
    from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response, content_types
    from aws_lambda_powertools.shared.cookies import Cookie

    app = APIGatewayHttpResolver()

    @app.get("/items/<item_id>")
    def get_item(item_id: str):  # type: ignore[no-untyped-def]
        event = app.current_event
        return {
            "item": item_id,
            "q": event.get_query_string_value("q"),
            "tags": event.resolved_query_string_parameters["tag"],  # 2.0 joins repeats with commas
            "theme": event.resolved_cookies_field.get("theme"),
            "agent": event.headers.get("User-Agent"),
            "method": event.http_method,
        }

    @app.post("/items")
    def create_item():  # type: ignore[no-untyped-def]
        return {"created": app.current_event.json_body["name"]}, 201

    @app.get("/download")
    def download():  # type: ignore[no-untyped-def]
        return Response(status_code=200, content_type="application/octet-stream", body=b"\x00\xffbinary",
                        cookies=[Cookie(name="seen", value="1"), Cookie(name="other", value="2")])

    @app.post("/upload")
    def upload():  # type: ignore[no-untyped-def]
        return Response(status_code=200, content_type=content_types.TEXT_PLAIN,
                        body=str(len(app.current_event.decoded_body)))

    return app


def through(app, method: str, path: str, query: str = "", headers=(), body: bytes = b""):  # type: ignore[no-untyped-def]
    event = http_event(HttpRequest(method=method, path=path, query_string=query,
                                   headers=[("Host", "localhost:8080"), *headers], body=body,
                                   source_ip="127.0.0.1", api_id="router", request_id="r-1"))
    context = SimpleNamespace(aws_request_id="r-1", function_name="router", get_remaining_time_in_millis=lambda: 1000)
    result = app.resolve(json.loads(json.dumps(event)), context)  # what the worker receives: JSON
    return http_response(json.dumps(result).encode())


def test_path_parameters_query_cookies_and_headers_reach_the_route():
    reply = through(make_app(), "GET", "/items/42", "q=x&tag=a&tag=b",
                    [("User-Agent", "tester"), ("Cookie", "theme=dark; lang=en")])
    assert reply.status == 200
    assert json.loads(reply.body) == {"item": "42", "q": "x", "tags": ["a", "b"], "theme": "dark",
                                      "agent": "tester", "method": "GET"}
    assert ("content-type", "application/json") in reply.headers


def test_json_bodies_and_status_codes_round_trip():
    reply = through(make_app(), "POST", "/items", headers=[("Content-Type", "application/json")],
                    body=b'{"name": "n"}')
    assert reply.status == 201 and json.loads(reply.body) == {"created": "n"}


def test_binary_responses_and_cookies():
    reply = through(make_app(), "GET", "/download")
    assert reply.status == 200 and reply.body == b"\x00\xffbinary"
    assert ("content-type", "application/octet-stream") in reply.headers
    assert sorted(v for k, v in reply.headers if k == "set-cookie") == ["other=2; Secure", "seen=1; Secure"]


def test_binary_request_bodies_are_decoded_by_the_resolver():
    # powertools decodes a base64 body to str (UTF-8), as it does on AWS.
    blob = "binary ✓".encode()
    reply = through(make_app(), "POST", "/upload", headers=[("Content-Type", "application/octet-stream")], body=blob)
    assert reply.status == 200 and reply.body == b"8"


def test_unknown_routes_are_the_resolvers_404():
    reply = through(make_app(), "GET", "/nowhere")
    assert reply.status == 404
    assert json.loads(reply.body)["message"] == "Not found"


def test_base64_event_body_is_what_powertools_expects():
    event = http_event(HttpRequest(method="POST", path="/", query_string="", headers=[("content-type", "image/png")],
                                   body=b"\x89PNG"))
    from aws_lambda_powertools.utilities.data_classes import APIGatewayProxyEventV2

    parsed = APIGatewayProxyEventV2(event)
    assert parsed.is_base64_encoded and base64.b64decode(parsed.body) == b"\x89PNG"
    assert parsed.path == "/" and parsed.http_method == "POST" and parsed.request_context.stage == "$default"
