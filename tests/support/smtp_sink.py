"""A real SMTP server on loopback for corral's notification tests (aiosmtpd).

Usage: smtp_sink.py PORT OUTFILE [LIFETIME_SECONDS]

Accepts every message and appends it to OUTFILE as one JSON line (Message-ID, subject, sender,
recipients, plain-text and HTML bodies). Prints "ready" once it listens, and stops by itself
after LIFETIME_SECONDS (default 300) if nobody stops it first.
"""

import json
import sys
import time
from email import message_from_bytes, policy

from aiosmtpd.controller import Controller


class Sink:
    def __init__(self, path):
        self.path = path

    async def handle_DATA(self, server, session, envelope):
        message = message_from_bytes(envelope.content, policy=policy.default)
        plain = message.get_body(preferencelist=("plain",))
        html = message.get_body(preferencelist=("html",))
        record = {
            "message_id": message["Message-ID"],
            "subject": message["Subject"],
            "from": envelope.mail_from,
            "to": envelope.rcpt_tos,
            "text": plain.get_content() if plain else "",
            "html": html.get_content() if html else "",
        }
        with open(self.path, "a", encoding="utf-8") as out:
            out.write(json.dumps(record) + "\n")
        return "250 Message accepted"


def main():
    port, path = int(sys.argv[1]), sys.argv[2]
    lifetime = float(sys.argv[3]) if len(sys.argv) > 3 else 300.0
    controller = Controller(Sink(path), hostname="127.0.0.1", port=port)
    controller.start()
    print("ready", flush=True)
    try:
        time.sleep(lifetime)
    finally:
        controller.stop()


if __name__ == "__main__":
    main()
