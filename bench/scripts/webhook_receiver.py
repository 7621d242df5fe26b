#!/usr/bin/env python3
"""A webhook receiver for bench/scripts/webhooks.sh: the "existing service".

Checks every request's X-Tern-Signature (as docs/http-api.md shows), answers
events with 204 and before-send calls by allowing every message. Prints its
counts on SIGTERM.   usage: webhook_receiver.py PORT SECRET
"""
import hashlib, hmac, json, signal, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT, SECRET = int(sys.argv[1]), sys.argv[2].encode()
counts = {"posts": 0, "events": 0, "before_send": 0, "bad_signature": 0}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as Tern's client expects
    # One write per response, sent at once: without these, headers and body
    # go out as separate small writes and Nagle + delayed ACK add ~40 ms.
    wbufsize = 1 << 16
    disable_nagle_algorithm = True

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        ts = self.headers.get("x-tern-timestamp", "")
        mac = hmac.new(SECRET, ts.encode() + b"." + body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest("sha256=" + mac, self.headers.get("x-tern-signature", "")):
            counts["bad_signature"] += 1
            self.send_response(401); self.send_header("content-length", "0"); self.end_headers()
            return
        doc = json.loads(body)
        counts["posts"] += 1
        if doc.get("type") == "before_send":
            counts["before_send"] += len(doc["messages"])
            out = json.dumps({"results": [{"action": "allow"}] * len(doc["messages"])}).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)
        else:
            counts["events"] += len(doc["events"])
            self.send_response(204); self.send_header("content-length", "0"); self.end_headers()

    def log_message(self, *args):
        pass


def stop(*_):
    print(json.dumps(counts), flush=True)
    sys.exit(0)


signal.signal(signal.SIGTERM, stop)
ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
