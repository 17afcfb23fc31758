#!/usr/bin/env python3
"""The testbed's gRPC app: helloworld.Greeter/SayHello (the gRPC examples'
service), built from protobuf descriptors at run time, so no generated code
and no grpcio-tools are needed (PyPI grpcio + protobuf).

SayHello answers HelloReply{message: "Hello, NAME"}, or aborts with
UNAVAILABLE when NAME starts with --fail-prefix ("fail"), or for a
deterministic --fail-ratio share of all calls (0.25: every 4th). Prints
`listening ADDR` on stderr once it serves; stops on SIGTERM or SIGINT.

    grpc_server.py --listen 127.0.0.1:50051 [--fail-prefix fail] [--fail-ratio 0.0]
"""

import argparse
import signal
import sys
import threading
from concurrent import futures

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

SERVICE = "helloworld.Greeter"
METHOD = "SayHello"


def messages():
    """(HelloRequest, HelloReply) classes, from helloworld.proto's descriptors."""
    f = descriptor_pb2.FileDescriptorProto(name="helloworld.proto", package="helloworld", syntax="proto3")
    string = descriptor_pb2.FieldDescriptorProto.TYPE_STRING
    optional = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
    for name, field in (("HelloRequest", "name"), ("HelloReply", "message")):
        m = f.message_type.add(name=name)
        m.field.add(name=field, number=1, type=string, label=optional, json_name=field)
    s = f.service.add(name="Greeter")
    s.method.add(name=METHOD, input_type=".helloworld.HelloRequest", output_type=".helloworld.HelloReply")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    return tuple(
        message_factory.GetMessageClass(pool.FindMessageTypeByName(f"helloworld.{n}"))
        for n in ("HelloRequest", "HelloReply")
    )


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--listen", default="127.0.0.1:50051")
    p.add_argument("--fail-prefix", default="fail")
    p.add_argument("--fail-ratio", type=float, default=0.0)
    p.add_argument("--workers", type=int, default=16)
    a = p.parse_args()

    request, reply = messages()
    lock = threading.Lock()
    seen = [0]

    def say_hello(req, context):
        with lock:
            i = seen[0]
            seen[0] += 1
        by_ratio = a.fail_ratio > 0 and int((i + 1) * a.fail_ratio) > int(i * a.fail_ratio)
        if (a.fail_prefix and req.name.startswith(a.fail_prefix)) or by_ratio:
            # The name's start only: a long name (grpc_client.py --pad) must
            # not make a trailer larger than a proxy takes.
            context.abort(grpc.StatusCode.UNAVAILABLE, f"{req.name[:64]}: unavailable on demand")
        return reply(message=f"Hello, {req.name}")

    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            METHOD: grpc.unary_unary_rpc_method_handler(
                say_hello, request_deserializer=request.FromString, response_serializer=reply.SerializeToString
            )
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=a.workers))
    server.add_generic_rpc_handlers((handler,))
    if server.add_insecure_port(a.listen) == 0:
        sys.exit(f"cannot listen on {a.listen}")
    server.start()
    print(f"listening {a.listen}", file=sys.stderr, flush=True)
    done = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    done.wait()
    server.stop(0).wait()


if __name__ == "__main__":
    main()
