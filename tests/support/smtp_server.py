#!/usr/bin/env python3
"""A real SMTP server on loopback, for keyward's alert-sink tests.

Started by testkit/src/smtp.rs with the Python of the test venv
(tests/requirements.txt: aiosmtpd, trustme). It listens on 127.0.0.1 on a
port the kernel picks, prints `READY <port>` on stdout once it accepts
connections, and writes each message it receives as one JSON file in the
spool directory (`NNNN.json`, written to a temp name and renamed, so a
reader never sees half a file): envelope sender and recipients, the
decoded subject, From, To and plain-text body, whether the connection was
encrypted, and the login used, if any.

Options:
  --starttls      offer STARTTLS, and require it before MAIL and AUTH
  --implicit-tls  speak TLS from the first byte (SMTPS)
  --auth          require AUTH (PLAIN or LOGIN) with user `--user` and the
                  password in the environment variable SMTP_TEST_PASSWORD
  --ca-out PATH   where to write the test CA's certificate (PEM) that signed
                  the server's certificate (for localhost and 127.0.0.1)

It exits when its stdin closes, so it never outlives the test that started
it.
"""

import argparse
import asyncio
import email
import email.policy
import itertools
import json
import logging
import os
import ssl
import sys
import threading
import warnings

import trustme
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

_numbers = itertools.count(1)


class Spool:
    """The aiosmtpd handler: records every message in the spool directory."""

    def __init__(self, directory):
        self.directory = directory

    async def handle_DATA(self, server, session, envelope):
        raw = envelope.original_content or envelope.content
        if isinstance(raw, str):
            raw = raw.encode()
        message = email.message_from_bytes(raw, policy=email.policy.default)
        body = message.get_body(preferencelist=("plain",))
        transport = server.transport
        encrypted = session.ssl is not None or (
            transport is not None and transport.get_extra_info("ssl_object") is not None
        )
        # What the authenticator put there: the login, as bytes.
        login = session.auth_data if session.authenticated else None
        record = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": list(envelope.rcpt_tos),
            "subject": str(message.get("subject", "")),
            "from": str(message.get("from", "")),
            "to": str(message.get("to", "")),
            "content_type": message.get_content_type(),
            "body": body.get_content() if body is not None else "",
            "tls": encrypted,
            "auth_user": login.decode() if isinstance(login, bytes) else login,
        }
        number = next(_numbers)
        final = os.path.join(self.directory, f"{number:04}.json")
        temp = final + ".tmp"
        with open(temp, "w", encoding="utf-8") as f:
            json.dump(record, f)
        os.rename(temp, final)
        return "250 Message accepted"


def make_authenticator(user, password):
    def authenticate(server, session, envelope, mechanism, auth_data):
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login == user.encode()
            and auth_data.password == password.encode()
        )
        return AuthResult(success=ok, auth_data=auth_data.login if ok else None)

    return authenticate


def tls_context(ca_out):
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(context)
    if ca_out:
        ca.cert_pem.write_to_path(ca_out)
    return context


async def serve(args):
    loop = asyncio.get_running_loop()
    context = tls_context(args.ca_out) if (args.starttls or args.implicit_tls) else None
    options = {"hostname": "localhost"}
    if args.starttls:
        options.update(tls_context=context, require_starttls=True)
    if args.auth:
        password = os.environ["SMTP_TEST_PASSWORD"]
        options.update(
            authenticator=make_authenticator(args.user, password),
            auth_required=True,
            # Over implicit TLS aiosmtpd does not know the connection is
            # encrypted; with STARTTLS it must insist on it.
            auth_require_tls=args.starttls,
        )
    server = await loop.create_server(
        lambda: SMTP(Spool(args.spool), **options),
        "127.0.0.1",
        0,
        ssl=context if args.implicit_tls else None,
    )
    port = server.sockets[0].getsockname()[1]
    print(f"READY {port}", flush=True)
    await server.serve_forever()


def exit_when_stdin_closes():
    sys.stdin.read()
    os._exit(0)


def main():
    # aiosmtpd warns about its own use of a deprecated attribute, and about
    # AUTH without STARTTLS, which over implicit TLS is intended here.
    warnings.filterwarnings("ignore", message="Session.login_data")
    warnings.filterwarnings("ignore", message="Requiring AUTH while not requiring TLS")
    logging.getLogger("mail.log").setLevel(logging.ERROR)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spool", required=True)
    parser.add_argument("--ca-out")
    parser.add_argument("--starttls", action="store_true")
    parser.add_argument("--implicit-tls", action="store_true")
    parser.add_argument("--auth", action="store_true")
    parser.add_argument("--user", default="keyward-alerts")
    args = parser.parse_args()
    threading.Thread(target=exit_when_stdin_closes, daemon=True).start()
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
