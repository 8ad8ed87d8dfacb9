"""Both ends of a gRPC call for tests/it/grpc.rs, with Debian's python3-grpcio.

No protoc: the service is registered with a generic handler and the
messages are raw bytes (identity serializers).

  grpc_peer.py serve PORT_FILE TOKENS_JSON SEEN_LOG
      A gRPC server on 127.0.0.1 (insecure, so h2c), port 0; the port it
      got is written to PORT_FILE once it listens. TOKENS_JSON is
      {"good": [...], "revoked": [...]}. Every call appends
      "<method> <authorization value>" to SEEN_LOG (the mock's own file,
      never graceway's). Methods of graceway.test.Echo:
        Say   unary: a revoked or unknown token is aborted with
              UNAUTHENTICATED before any message (a trailers-only answer);
              a good one gets b"echo:" + the request.
        Late  server streaming: one message b"partial" to any token, then
              UNAUTHENTICATED in the trailers for a token not good, OK for
              a good one.
        Hold  unary: waits until the file named by the request exists
              (at most 30 s), then answers b"held".
        Deny  unary: PERMISSION_DENIED to every token, before any message
              (a trailers-only answer, no error detail a client could read
              as a revocation).

  grpc_peer.py call PORT METHOD PAYLOAD [TIMEOUT]
      One call to 127.0.0.1:PORT (insecure: HTTP/2 with prior knowledge)
      with no metadata of its own; prints one JSON line: {"code": status
      name, "details": ..., "replies": [...]} and exits 0. A PAYLOAD of
      "big:N" sends N bytes of "x" (replies are then their length).
"""

import json
import os
import sys
import time
from concurrent import futures

import grpc

SERVICE = "graceway.test.Echo"


def identity(b):
    return b


def serve(port_file, tokens_file, seen_log):
    with open(tokens_file) as f:
        tokens = json.load(f)
    good = {"Bearer " + t for t in tokens["good"]}

    def seen(method, context):
        auth = dict(context.invocation_metadata()).get("authorization", "")
        with open(seen_log, "a") as f:
            f.write(f"{method} {auth}\n")
        return auth

    def say(request, context):
        if seen("Say", context) not in good:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "token not valid")
        return b"echo:" + request

    def late(request, context):
        auth = seen("Late", context)
        yield b"partial"
        if auth not in good:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "token not valid")

    def hold(request, context):
        seen("Hold", context)
        deadline = time.monotonic() + 30
        while not os.path.exists(request.decode()) and time.monotonic() < deadline:
            time.sleep(0.02)
        return b"held"

    def deny(request, context):
        seen("Deny", context)
        context.abort(grpc.StatusCode.PERMISSION_DENIED, "not for this project")

    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Say": grpc.unary_unary_rpc_method_handler(
                say, request_deserializer=identity, response_serializer=identity
            ),
            "Late": grpc.unary_stream_rpc_method_handler(
                late, request_deserializer=identity, response_serializer=identity
            ),
            "Hold": grpc.unary_unary_rpc_method_handler(
                hold, request_deserializer=identity, response_serializer=identity
            ),
            "Deny": grpc.unary_unary_rpc_method_handler(
                deny, request_deserializer=identity, response_serializer=identity
            ),
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    tmp = port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(port))
    os.rename(tmp, port_file)
    server.wait_for_termination()


def call(port, method, payload, timeout):
    path = f"/{SERVICE}/{method}"
    big = payload.startswith("big:")
    if big:
        payload = "x" * int(payload[4:])
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        replies = []
        try:
            if method == "Late":
                stub = channel.unary_stream(
                    path, request_serializer=identity, response_deserializer=identity
                )
                for r in stub(payload.encode(), timeout=timeout):
                    replies.append(r.decode())
            else:
                stub = channel.unary_unary(
                    path, request_serializer=identity, response_deserializer=identity
                )
                reply = stub(payload.encode(), timeout=timeout)
                replies.append(len(reply) if big else reply.decode())
            code, details = "OK", ""
        except grpc.RpcError as e:
            code, details = e.code().name, e.details()
    print(json.dumps({"code": code, "details": details, "replies": replies}), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(*sys.argv[2:5])
    else:
        timeout = float(sys.argv[5]) if len(sys.argv) > 5 else 20.0
        call(int(sys.argv[2]), sys.argv[3], sys.argv[4], timeout)
