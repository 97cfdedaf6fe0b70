"""A receiver for the bridge's HTTP sink: checks each request with the
official Standard Webhooks library and records what it took.

Prints its port on the first line of stdout. Each request it takes (2xx)
adds one line to --out per event: {"webhook_id", "event"}. Requests whose
signature the library refuses are answered 401 and counted in --out's
"<out>.unverified". --down-for N answers 503 (with Retry-After when
--retry-after is given) for N seconds from the first request; --refuse KEY
answers 400 to any request that carries an event of that room.
"""

import argparse
import json
import ssl
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook, WebhookVerificationError


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--secret", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--down-for", type=float, default=0)
    parser.add_argument("--retry-after", type=int)
    parser.add_argument("--refuse")
    parser.add_argument("--cert")
    parser.add_argument("--key")
    args = parser.parse_args()

    webhook = Webhook(args.secret)
    lock = threading.Lock()
    first = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *_):
            pass

        def answer(self, status, headers=()):
            self.send_response(status)
            for name, value in headers:
                self.send_header(name, value)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            headers = {name.lower(): value for name, value in self.headers.items()}
            try:
                payload = webhook.verify(body, headers)
            except WebhookVerificationError:
                with lock:
                    with open(args.out + ".unverified", "a") as f:
                        f.write(headers.get("webhook-id", "") + "\n")
                return self.answer(401)
            with lock:
                if not first:
                    first.append(time.monotonic())
                down = time.monotonic() - first[0] < args.down_for
            if down:
                with lock:
                    with open(args.out + ".refused", "a") as f:
                        f.write(headers["webhook-id"] + "\n")
                after = [] if args.retry_after is None else [("Retry-After", str(args.retry_after))]
                return self.answer(503, after)
            events = payload if isinstance(payload, list) else [payload]
            if args.refuse and any(event.get("room_id") == args.refuse for event in events):
                return self.answer(400)
            with lock:
                with open(args.out, "a") as f:
                    for event in events:
                        f.write(json.dumps({"webhook_id": headers["webhook-id"], "event": event}) + "\n")
            self.answer(204)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if args.cert:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.cert, args.key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    print(server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
