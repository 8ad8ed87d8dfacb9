"""A mock AWS upstream for tests/it/sigv4.rs: recomputes each request's
SigV4 signature with botocore's SigV4Auth (an implementation independent of
the aws-sigv4 crate graceway signs with) and refuses a wrong one.

    python3 sigv4_upstream.py PORT_FILE KEYS_FILE REGION SERVICE

KEYS_FILE (JSON, read on every request so a test can change it):
    {"AKID": {"secret": "...", "token": "..." or null, "refuse": "ExpiredToken" or null}}
An answer of 200 is JSON saying what was verified; a refusal is a 403 with
the code in `x-amzn-ErrorType` and in the body, as AWS's JSON APIs send it.
"""

import hashlib
import hmac
import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

PORT_FILE, KEYS_FILE, REGION, SERVICE = sys.argv[1:5]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, status, doc, error_type=None):
        body = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if error_type:
            self.send_header("x-amzn-ErrorType", error_type)
        self.end_headers()
        self.wfile.write(body)

    def refuse(self, code, message):
        self.answer(403, {"__type": code, "message": message}, code)

    def handle_any(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        auth = self.headers.get("Authorization") or ""
        if not auth.startswith("AWS4-HMAC-SHA256 "):
            return self.refuse("MissingAuthenticationTokenException", "no SigV4 Authorization")
        fields = dict(
            part.strip().split("=", 1) for part in auth[len("AWS4-HMAC-SHA256 "):].split(",")
        )
        akid, date, region, service, _ = fields["Credential"].split("/")
        signed = fields["SignedHeaders"].split(";")
        with open(KEYS_FILE) as f:
            keys = json.load(f)
        key = keys.get(akid)
        if key is None:
            return self.refuse("UnrecognizedClientException", "unknown access key id")
        if key.get("refuse"):
            return self.refuse(key["refuse"], "refused by the test")
        if (region, service) != (REGION, SERVICE):
            return self.refuse("InvalidSignatureException", f"scope {region}/{service}")
        token = self.headers.get("X-Amz-Security-Token")
        if token != key.get("token"):
            return self.refuse("UnrecognizedClientException", "session token mismatch")
        payload = self.headers.get("X-Amz-Content-SHA256")
        if payload != "UNSIGNED-PAYLOAD" and payload != hashlib.sha256(body).hexdigest():
            return self.refuse("InvalidSignatureException", "body hash mismatch")
        headers = {h: self.headers.get(h) for h in signed}
        req = AWSRequest(
            method=self.command,
            url="http://" + self.headers["Host"] + self.path,
            data=body,
            headers=headers,
        )
        req.context["timestamp"] = self.headers["X-Amz-Date"]
        signer = SigV4Auth(Credentials(akid, key["secret"], key.get("token")), SERVICE, REGION)
        canonical = signer.canonical_request(req)
        expected = signer.signature(signer.string_to_sign(req, canonical), req)
        if signer.signed_headers(signer.headers_to_sign(req)) != fields["SignedHeaders"]:
            return self.refuse("SignatureDoesNotMatch", "signed headers differ")
        if not hmac.compare_digest(expected, fields["Signature"]):
            return self.refuse("SignatureDoesNotMatch", "signature mismatch")
        self.answer(
            200,
            {
                "verified": True,
                "akid": akid,
                "token": token is not None,
                "payload": payload,
                "path": self.path,
                "body_bytes": len(body),
                "signed_headers": signed,
            },
        )

    do_GET = do_POST = do_PUT = do_DELETE = handle_any


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
server.daemon_threads = True
with open(PORT_FILE + ".tmp", "w") as f:
    f.write(str(server.server_address[1]))
os.rename(PORT_FILE + ".tmp", PORT_FILE)
server.serve_forever()
