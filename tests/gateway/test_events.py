"""HTTP ⇄ API Gateway HTTP API payload 2.0, by the rules AWS documents."""

from __future__ import annotations

import base64
import json
import re

import pytest

from gateway.events import HttpRequest, HttpResponse, InvalidResponse, http_event, http_response


def request(**overrides) -> HttpRequest:  # type: ignore[no-untyped-def]
    fields = dict(
        method="GET", path="/", query_string="", headers=[("Host", "gw.example.com:8080")], source_ip="10.0.0.7",
        api_id="hello", request_id="rid-1", received_at=1_583_348_638.390,
    )
    fields.update(overrides)
    return HttpRequest(**fields)  # type: ignore[arg-type]


def test_event_has_the_documented_shape():
    event = http_event(request(method="POST", path="/items/1", headers=[("Host", "gw.example.com:8080"),
                                                                        ("User-Agent", "curl/8")]))
    assert event["version"] == "2.0" and event["routeKey"] == "$default"
    assert event["rawPath"] == "/items/1" and event["rawQueryString"] == ""
    assert "queryStringParameters" not in event and "pathParameters" not in event and "cookies" not in event
    assert "body" not in event and event["isBase64Encoded"] is False
    ctx = event["requestContext"]
    assert ctx["http"] == {"method": "POST", "path": "/items/1", "protocol": "HTTP/1.1", "sourceIp": "10.0.0.7",
                           "userAgent": "curl/8"}
    assert ctx["routeKey"] == "$default" and ctx["stage"] == "$default" and ctx["requestId"] == "rid-1"
    assert ctx["domainName"] == "gw.example.com" and ctx["domainPrefix"] == "gw" and ctx["apiId"] == "hello"
    assert ctx["time"] == "04/Mar/2020:19:03:58 +0000" and ctx["timeEpoch"] == 1583348638390
    assert re.fullmatch(r"\d{2}/[A-Z][a-z]{2}/\d{4}:\d{2}:\d{2}:\d{2} \+0000", ctx["time"])
    json.dumps(event)  # serialisable as is


def test_query_string_is_raw_and_parameters_are_decoded_and_comma_joined():
    event = http_event(request(query_string="a=1&a=2&b=x%20y&empty=&c=%2C"))
    assert event["rawQueryString"] == "a=1&a=2&b=x%20y&empty=&c=%2C"
    assert event["queryStringParameters"] == {"a": "1,2", "b": "x y", "empty": "", "c": ","}


def test_headers_are_lower_cased_and_repeats_comma_joined_cookies_split_out():
    event = http_event(request(headers=[
        ("Host", "h"), ("X-Thing", "1"), ("x-thing", "2"), ("Cookie", "a=1; b=2"), ("cookie", "c=3"),
    ]))
    assert event["headers"] == {"host": "h", "x-thing": "1,2"}
    assert event["cookies"] == ["a=1", "b=2", "c=3"]


@pytest.mark.parametrize(
    ("content_type", "body", "base64_encoded"),
    [
        (None, b'{"a": 1}', False),
        ("application/json", "héllo".encode(), False),
        ("text/plain; charset=utf-8", b"hi", False),
        ("application/x-www-form-urlencoded", b"a=1&b=2", False),
        ("application/vnd.api+json", b"{}", False),
        ("application/xml", b"<a/>", False),
        ("application/octet-stream", b"hi", True),
        ("image/png", b"\x89PNG\r\n", True),
        ("text/plain", b"\xff\xfe not utf-8", True),
    ],
)
def test_bodies_are_text_or_base64(content_type, body, base64_encoded):
    headers = [("Host", "h")] + ([("Content-Type", content_type)] if content_type else [])
    event = http_event(request(method="POST", headers=headers, body=body))
    assert event["isBase64Encoded"] is base64_encoded
    if base64_encoded:
        assert base64.b64decode(event["body"]) == body
    else:
        assert event["body"] == body.decode()


# responses


def test_a_response_description_sets_status_headers_cookies_and_body():
    reply = http_response(json.dumps({
        "statusCode": 201, "headers": {"X-One": "1", "Content-Type": "text/plain", "Content-Length": "999"},
        "multiValueHeaders": {"X-Many": ["a", "b"]}, "cookies": ["s=1; Path=/", "t=2"], "body": "made",
    }).encode())
    assert reply.status == 201 and reply.body == b"made"
    assert ("x-one", "1") in reply.headers and ("content-type", "text/plain") in reply.headers
    assert [v for k, v in reply.headers if k == "x-many"] == ["a", "b"]
    assert [v for k, v in reply.headers if k == "set-cookie"] == ["s=1; Path=/", "t=2"]
    assert not any(k == "content-length" for k, _ in reply.headers)  # the gateway frames the body itself


def test_a_response_description_defaults_to_json_and_decodes_base64():
    reply = http_response(json.dumps({"statusCode": 200, "body": base64.b64encode(b"\x00\x01").decode(),
                                      "isBase64Encoded": True}).encode())
    assert reply == HttpResponse(200, [("content-type", "application/json")], b"\x00\x01")
    assert http_response(b'{"statusCode": 204}') == HttpResponse(204, [("content-type", "application/json")], b"")


@pytest.mark.parametrize("value", [{"message": "hi"}, [1, 2], "text", 42, None, True])
def test_any_other_value_is_the_json_body_of_a_200(value):
    payload = json.dumps(value).encode()
    assert http_response(payload) == HttpResponse(200, [("content-type", "application/json")], payload)


@pytest.mark.parametrize(
    ("description", "words"),
    [
        ({"statusCode": "teapot"}, "not an HTTP status"),
        ({"statusCode": 99}, "not an HTTP status"),
        ({"statusCode": 200, "headers": {"Bad Name": "x"}}, "not a valid header name"),
        ({"statusCode": 200, "headers": {"x": {"nested": 1}}}, "expected a string"),
        ({"statusCode": 200, "body": "!!", "isBase64Encoded": True}, "not valid base64"),
        ({"statusCode": 200, "cookies": "a=1"}, "cookies must be a list"),
    ],
)
def test_malformed_descriptions_are_refused(description, words):
    with pytest.raises(InvalidResponse, match=words):
        http_response(json.dumps(description).encode())
