"""An HTTPS receiver for the alert tests: the far end of a webhook sink that
speaks TLS with a certificate from a throwaway CA (trustme, from
tests/requirements.txt).

Usage: https_receiver.py --ca-out PATH --log PATH

It listens on 127.0.0.1 on a port the kernel picks, writes the CA's
certificate (PEM) to --ca-out, prints "READY <port>" on stdout, answers
every POST with 200 and appends one JSON line per request to --log:
{"path": ..., "body": <the body parsed as JSON>}. It exits when its stdin
closes (the test dropped it).
"""

import argparse
import http.server
import json
import ssl
import sys
import threading

import trustme


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--ca-out", required=True)
    parser.add_argument("--log", required=True)
    args = parser.parse_args()

    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    ca.cert_pem.write_to_path(args.ca_out)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            try:
                parsed = json.loads(body)
            except ValueError:
                parsed = None
            with lock, open(args.log, "a") as log:
                log.write(json.dumps({"path": self.path, "body": parsed}) + "\n")
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(f"READY {server.server_address[1]}", flush=True)
    sys.stdin.read()
    server.shutdown()


if __name__ == "__main__":
    main()
