#!/usr/bin/env python3
"""A stand-in for the KEDA HTTP add-on's interceptor proxy, for tests without a cluster: it
forwards a request to the backend only when its Host header is the InterceptorRoute's host
(the interceptor's routing rule), streaming the answer through, and answers 404 otherwise, as
the interceptor does for a host no route claims. GET /_standin/routed says how many requests it
forwarded and refused.

    python3 scripts/interceptor_standin.py PORT HOST BACKEND(host:port)
"""
import http.client
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

port, host, backend = int(sys.argv[1]), sys.argv[2], sys.argv[3]
counts = {"routed": 0, "refused": 0, "refused_hosts": []}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _forward(self):
        if self.path == "/_standin/routed":
            return self._reply(200, counts)
        if self.headers.get("Host", "").split(":")[0] != host:
            counts["refused"] += 1
            counts["refused_hosts"].append(f"{self.command} {self.path} Host={self.headers.get('Host')}")
            return self._reply(404, {"error": f"no route for host {self.headers.get('Host')!r}"})
        counts["routed"] += 1
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        conn = http.client.HTTPConnection(backend, timeout=300)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
        conn.request(self.command, self.path, body=body, headers=headers)
        resp = conn.getresponse()
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                self.send_header(k, v)
        # Streamed through as it comes (SSE), chunk by chunk.
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        while True:
            chunk = resp.read1(65536)
            if not chunk:
                break
            self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")
        conn.close()

    do_GET = do_POST = _forward


ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
