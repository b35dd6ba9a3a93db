"""The middleware's one pass over the request headers, and the call id on every answer."""

from __future__ import annotations

from litellm_pglog.middleware import CALL_ID_HEADER, RequestHeaders, _ensure_call_id

RAW = [
    (b"host", b"gateway"),
    (b"authorization", b"Bearer first"),
    (b"x-litellm-call-id", b"client-chosen"),
    (b"content-type", b"application/json"),
    (b"authorization", b"Bearer second"),
    (b"x-litellm-call-id", b"another"),
    (b"user-agent", b"tests"),
]


def test_the_first_value_of_each_read_header_counts_and_others_are_not_kept():
    headers = RequestHeaders.read(RAW)

    assert headers.values == {"authorization": "Bearer first", "content-type": "application/json"}


def test_the_app_sees_our_call_id_instead_of_any_the_client_sent():
    forwarded = RequestHeaders.read(RAW).forwarded("0190-ours")

    assert forwarded == [
        (b"host", b"gateway"),
        (b"authorization", b"Bearer first"),
        (b"content-type", b"application/json"),
        (b"authorization", b"Bearer second"),
        (b"user-agent", b"tests"),
        (CALL_ID_HEADER.encode(), b"0190-ours"),
    ]
    assert RAW[2] == (b"x-litellm-call-id", b"client-chosen")  # the server's list is not changed


def test_an_answer_gets_our_call_id_once_whatever_it_carried():
    start = {"type": "http.response.start", "status": 401, "headers": [(b"X-LiteLLM-Call-Id", b"made-up")]}
    fixed = _ensure_call_id(start, "0190-ours")
    assert fixed["headers"] == [(CALL_ID_HEADER.encode(), b"0190-ours")]
    assert _ensure_call_id(fixed, "0190-ours") is fixed  # already ours: unchanged

    bare = {"type": "http.response.start", "status": 200}
    assert _ensure_call_id(bare, "0190-ours")["headers"] == [(CALL_ID_HEADER.encode(), b"0190-ours")]
