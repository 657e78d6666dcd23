"""A mock of the OpenAI API, for driving the gateway with the official SDKs.

Run: python3 tests/compat/mock_openai.py PORT

It answers the endpoints the compatibility suite uses the way OpenAI does
(JSON bodies, SSE streams, binary content, OpenAI's headers and error shape)
and records every request it receives, which tests read back from
GET /_mock/requests (and clear with DELETE /_mock/requests).

Triggers: a model named "force-429" gets a 429 with retry-after the first
time per distinct x-mock-attempt-key (the SDK retry then succeeds); "force-500"
always gets a 500 with an OpenAI error body.
"""

import hashlib
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

RECORDED = []
LOCK = threading.Lock()
SEEN_429 = set()

# A fixed "binary file": every byte value, repeated.
FILE_BYTES = bytes(range(256)) * 64


def chunk(cid, content=None, finish=None):
    delta = {} if content is None else {"content": content}
    return {
        "id": cid,
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    break
                data += self.rfile.read(size)
                self.rfile.readline()
            return data
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _record(self, body):
        entry = {
            "method": self.command,
            "target": self.path,
            "headers": [[k.lower(), v] for k, v in self.headers.items()],
            "body_len": len(body),
            "body_sha256": hashlib.sha256(body).hexdigest(),
        }
        with LOCK:
            RECORDED.append(entry)

    def _send(self, status, body, ctype="application/json", extra=None):
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("x-request-id", "req_mock_%d" % len(RECORDED))
        self.send_header("openai-processing-ms", "7")
        self.send_header("openai-version", "2020-10-01")
        self.send_header("x-ratelimit-limit-requests", "10000")
        self.send_header("x-ratelimit-remaining-requests", "9999")
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status, message, code=None, extra=None):
        self._send(status, {"error": {"message": message, "type": "server_error" if status >= 500 else "rate_limit_error", "param": None, "code": code}}, extra=extra)

    def _sse(self, events, gap):
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("x-request-id", "req_mock_stream")
        self.end_headers()
        for i, (name, data) in enumerate(events):
            if i:
                time.sleep(gap)
            text = ("event: %s\n" % name if name else "") + "data: %s\n\n" % (data if isinstance(data, str) else json.dumps(data))
            raw = text.encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(raw), raw))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def do_DELETE(self):
        self._body()
        if self.path == "/_mock/requests":
            with LOCK:
                RECORDED.clear()
            return self._send(200, {"cleared": True})
        self._record(b"")
        self._send(200, {"deleted": True})

    def do_OPTIONS(self):
        self._record(self._body())
        self._send(200, {"options": True})

    def do_GET(self):
        body = self._body()
        if self.path == "/_mock/requests":
            with LOCK:
                return self._send(200, list(RECORDED))
        self._record(body)
        path = self.path.split("?")[0]
        if path.endswith("/models"):
            return self._send(200, {"object": "list", "data": [{"id": "gpt-4o-mini", "object": "model", "created": 1, "owned_by": "openai"}]})
        if path.endswith("/content"):
            return self._send(200, FILE_BYTES, ctype="application/octet-stream")
        return self._error(404, "Unknown mock path %s" % path, code="not_found")

    def do_POST(self):
        body = self._body()
        self._record(body)
        path = self.path.split("?")[0]
        ctype = self.headers.get("Content-Type", "")
        req = {}
        if ctype.startswith("application/json") and body:
            req = json.loads(body)
        model = req.get("model", "")
        if model == "force-500":
            return self._error(500, "The mock upstream failed on purpose.")
        if model == "force-429":
            key = self.headers.get("x-mock-attempt-key", "")
            if key not in SEEN_429:
                SEEN_429.add(key)
                return self._error(429, "Rate limit reached (mock).", code="rate_limit_exceeded", extra={"retry-after": "0"})
        gap = float(req.get("metadata", {}).get("gap", "0.2")) if isinstance(req.get("metadata"), dict) else 0.2
        if path.endswith("/chat/completions"):
            words = ["Hello", " from", " the", " mock", "!"]
            if req.get("stream"):
                events = [(None, chunk("chatcmpl-mock", w)) for w in words]
                events.append((None, chunk("chatcmpl-mock", None, "stop")))
                events.append((None, "[DONE]"))
                return self._sse(events, gap)
            return self._send(200, {
                "id": "chatcmpl-mock", "object": "chat.completion", "created": 1700000000, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(words)}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8},
            })
        if path.endswith("/responses"):
            resp = {"id": "resp_mock", "object": "response", "created_at": 1700000000, "model": model, "status": "in_progress", "output": []}
            item = {"id": "msg_1", "type": "message", "role": "assistant", "status": "in_progress", "content": []}
            part = {"type": "output_text", "text": "", "annotations": []}
            seq = iter(range(100))
            ev = lambda kind, **kw: (kind, dict(type=kind, sequence_number=next(seq), **kw))
            events = [
                ev("response.created", response=resp),
                ev("response.in_progress", response=resp),
                ev("response.output_item.added", output_index=0, item=item),
                ev("response.content_part.added", item_id="msg_1", output_index=0, content_index=0, part=part),
            ]
            for w in ["Hi", " there"]:
                events.append(ev("response.output_text.delta", item_id="msg_1", output_index=0, content_index=0, delta=w, logprobs=[]))
            full = dict(part, text="Hi there")
            done_item = dict(item, status="completed", content=[full])
            events += [
                ev("response.output_text.done", item_id="msg_1", output_index=0, content_index=0, text="Hi there", logprobs=[]),
                ev("response.content_part.done", item_id="msg_1", output_index=0, content_index=0, part=full),
                ev("response.output_item.done", output_index=0, item=done_item),
                ev("response.completed", response=dict(resp, status="completed", output=[done_item])),
            ]
            return self._sse(events, gap)
        if path.endswith("/embeddings"):
            return self._send(200, {"object": "list", "model": model, "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2, 0.3]}], "usage": {"prompt_tokens": 1, "total_tokens": 1}})
        if path.endswith("/audio/transcriptions"):
            # Echo the digest of the uploaded file part so clients can check it byte for byte.
            boundary = ctype.split("boundary=")[-1].strip('"').encode()
            digest = None
            for part in body.split(b"--" + boundary):
                head, _, content = part.partition(b"\r\n\r\n")
                if b'name="file"' in head:
                    digest = hashlib.sha256(content[:-2]).hexdigest()
            return self._send(200, {"text": "sha256:%s" % digest})
        if path.endswith("/images/generations"):
            return self._send(200, {"created": 1700000000, "data": [{"b64_json": "aGVsbG8=", "revised_prompt": req.get("prompt")}]})
        return self._error(404, "Unknown mock path %s" % path, code="not_found")


def main():
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    print("mock listening on %d" % server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
