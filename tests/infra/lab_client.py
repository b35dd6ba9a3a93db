"""HTTP client run INSIDE a lab host (standard library only): a batch of requests, in parallel.

Reads one JSON document on stdin, so keys never appear in a command line::

    {"base": "https://192.168.10.18:4000", "parallel": 4, "ca": "<PEM of the CA>",
     "keys": {"TEST_KEY": "..."},
     "requests": [{"method": "POST", "path": "/v1/chat/completions", "key": "TEST_KEY",
                   "json": {...}} ...]}

A request's "key" names an entry of "keys" (sent as ``Authorization: Bearer``), "json" is sent
as application/json, "multipart" ({"field": "value", "file": ["name", "text"]}) as
multipart/form-data, "headers" are added as given. Prints one JSON list: per request, in
order, its status (0: no HTTP answer), x-litellm-call-id, seconds taken and the first 2000
characters of the body (all of it with "full": true). Tests import nothing from here: they
run this file's text with ``python3 -c`` on the client host.
"""

import json
import ssl
import sys
import time
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor

BODY_CHARS = 2000


def multipart(fields):
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        if isinstance(value, list):
            filename, text = value
            head = f'Content-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
            head += "Content-Type: application/octet-stream\r\n"
        else:
            head, text = f'Content-Disposition: form-data; name="{name}"\r\n', value
        parts.append(f"--{boundary}\r\n{head}\r\n{text}\r\n".encode())
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def build(spec, base, keys):
    headers = dict(spec.get("headers") or {})
    if spec.get("key"):
        headers["Authorization"] = "Bearer " + keys.get(spec["key"], spec["key"])
    data = None
    if "json" in spec:
        data, headers["Content-Type"] = json.dumps(spec["json"]).encode(), "application/json"
    elif "multipart" in spec:
        data, headers["Content-Type"] = multipart(spec["multipart"])
    elif "data" in spec:
        data = spec["data"].encode()
    return urllib.request.Request(base + spec["path"], data=data, headers=headers, method=spec["method"])


def send(spec, base, keys, timeout, context=None):
    started = time.monotonic()
    try:
        with urllib.request.urlopen(build(spec, base, keys), timeout=timeout, context=context) as answer:
            status, headers, body = answer.status, answer.headers, answer.read()
    except urllib.error.HTTPError as error:
        status, headers, body = error.code, error.headers, error.read()
    except OSError as error:
        status, headers, body = 0, {}, str(error).encode()
    return {
        "status": status,
        "call_id": headers.get("x-litellm-call-id"),
        "seconds": round(time.monotonic() - started, 3),
        "body": body[: None if spec.get("full") else BODY_CHARS].decode(errors="replace"),
    }


def main():
    batch = json.loads(sys.stdin.read())
    base, keys, timeout = batch["base"], batch.get("keys", {}), batch.get("timeout", 120)
    # HTTPS: verified against the CA given (the deployment CA), host name included.
    context = ssl.create_default_context(cadata=batch["ca"]) if batch.get("ca") else None
    with ThreadPoolExecutor(max_workers=batch.get("parallel", 1)) as pool:
        results = list(pool.map(lambda spec: send(spec, base, keys, timeout, context), batch["requests"]))
    print(json.dumps(results))


main()
