"""A gRPC server and client from PyPI's grpcio, for the HTTP/2 tests: a peer nobody here wrote.

    grpc_peer.py server        serves mesh.Echo on 127.0.0.1, prints "listening PORT"
    grpc_peer.py client ADDR   calls every method through ADDR, checks each answer, prints
                               one "ok NAME" line per call and exits 0, or fails loudly

Messages are raw bytes (no protobuf): the proxy sees the same HTTP/2 frames, trailers and
statuses either way.
"""

import sys
from concurrent import futures

import grpc

SERVICE = "mesh.Echo"
BIG = bytes(range(256)) * 4096  # 1 MiB, several DATA frames each way


def unary(request, context):
    context.set_trailing_metadata((("echo-trailer", "unary"),))
    return b"echo:" + request


def server_stream(request, context):
    for i in range(int(request)):
        yield b"part %d" % i


def client_stream(requests, context):
    return b"".join(requests)


def bidi(requests, context):
    for r in requests:
        yield r


def fail(request, context):
    # A trailers-only response: the status in the only HEADERS frame.
    context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")


def fail_late(request, context):
    # Data first, then a non-OK status in the trailers.
    yield b"partial"
    context.abort(grpc.StatusCode.PERMISSION_DENIED, "stopped halfway")


def serve():
    raw = {"request_deserializer": None, "response_serializer": None}
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary, **raw),
        "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream, **raw),
        "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream, **raw),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi, **raw),
        "Fail": grpc.unary_unary_rpc_method_handler(fail, **raw),
        "FailLate": grpc.unary_stream_rpc_method_handler(fail_late, **raw),
    }
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=8),
        options=[
            ("grpc.max_receive_message_length", 8 << 20),
            ("grpc.max_send_message_length", 8 << 20),
        ],
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE, handlers),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print("listening", port, flush=True)
    # Until the test closes stdin.
    sys.stdin.read()
    server.stop(0)


def check(name, got, want):
    if got != want:
        sys.exit(f"{name}: got {got!r:.200}, want {want!r:.200}")
    print("ok", name, flush=True)


def client(addr):
    channel = grpc.insecure_channel(
        addr,
        options=[
            ("grpc.enable_http_proxy", 0),
            ("grpc.max_receive_message_length", 8 << 20),
            ("grpc.max_send_message_length", 8 << 20),
        ],
    )
    grpc.channel_ready_future(channel).result(timeout=20)

    def method(kind, name):
        return getattr(channel, kind)(f"/{SERVICE}/{name}")

    resp, call = method("unary_unary", "Unary").with_call(b"hello", timeout=20)
    check("unary", resp, b"echo:hello")
    check("unary trailers", dict(call.trailing_metadata()).get("echo-trailer"), "unary")

    parts = list(method("unary_stream", "ServerStream")(b"5", timeout=20))
    check("server streaming", parts, [b"part %d" % i for i in range(5)])

    chunks = [BIG[i : i + 65536] for i in range(0, len(BIG), 65536)]
    check(
        "client streaming",
        method("stream_unary", "ClientStream")(iter(chunks), timeout=20),
        BIG,
    )

    back = list(method("stream_stream", "Bidi")(iter([b"a", BIG, b"c"]), timeout=20))
    check("bidi streaming", back, [b"a", BIG, b"c"])

    try:
        method("unary_unary", "Fail")(b"x", timeout=20)
        sys.exit("fail: no error")
    except grpc.RpcError as e:
        check("status not found", (e.code(), e.details()), (grpc.StatusCode.NOT_FOUND, "no such thing"))

    got = []
    try:
        for m in method("unary_stream", "FailLate")(b"x", timeout=20):
            got.append(m)
        sys.exit("fail late: no error")
    except grpc.RpcError as e:
        check(
            "status after data",
            (got, e.code(), e.details()),
            ([b"partial"], grpc.StatusCode.PERMISSION_DENIED, "stopped halfway"),
        )
    channel.close()


if __name__ == "__main__":
    if sys.argv[1] == "server":
        serve()
    else:
        client(sys.argv[2])
