#!/usr/bin/env python3
"""A minimal OTLP trace and metrics receiver for pmoas's tests, built from
the official OTLP definitions (PyPI opentelemetry-proto, grpcio, protobuf).

Serves OTLP/gRPC (TraceService/Export, MetricsService/Export) and OTLP/HTTP
protobuf (POST /v1/traces, /v1/metrics) on 127.0.0.1 only. Prints one JSON
line when ready, {"ready": {"grpc": PORT, "http": PORT}}, then one JSON line
per received span, and per received metric data point
({"signal": "metric", ...}) followed by {"signal": "metrics_done",
"request": N} after each metrics request, on stdout (or --out). Port 0
picks a free port, which the ready line names, so parallel tests cannot
collide. Exits when its stdin closes, so a test that dies cannot leave it
behind.

    otlp_receiver.py --grpc-port 0 --http-port 0 [--out spans.jsonl]
"""

import argparse
import json
import sys
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

_lock = threading.Lock()
_metrics_requests = [0]


def any_value(v):
    kind = v.WhichOneof("value")
    if kind == "string_value":
        return v.string_value
    if kind == "int_value":
        return v.int_value
    if kind == "bool_value":
        return v.bool_value
    if kind == "double_value":
        return v.double_value
    if kind == "array_value":
        return [any_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in v.kvlist_value.values}
    if kind == "bytes_value":
        return v.bytes_value.hex()
    return None


def attributes(kvs):
    return {kv.key: any_value(kv.value) for kv in kvs}


def record(request, transport, out):
    """Writes every span of an ExportTraceServiceRequest as a JSON line."""
    lines = []
    for rs in request.resource_spans:
        resource = attributes(rs.resource.attributes)
        for ss in rs.scope_spans:
            for span in ss.spans:
                lines.append(
                    json.dumps(
                        {
                            "transport": transport,
                            "trace_id": span.trace_id.hex(),
                            "span_id": span.span_id.hex(),
                            "parent_span_id": span.parent_span_id.hex(),
                            # trace flags (bit 0: sampled) | 0x100: whether
                            # the parent is remote is known | 0x200: it is.
                            "flags": span.flags,
                            "name": span.name,
                            "kind": span.kind,
                            "start_unix_nano": span.start_time_unix_nano,
                            "end_unix_nano": span.end_time_unix_nano,
                            "attributes": attributes(span.attributes),
                            "status": {"code": span.status.code, "message": span.status.message},
                            "scope": ss.scope.name,
                            "resource": resource,
                        },
                        sort_keys=True,
                    )
                )
    with _lock:
        for line in lines:
            out.write(line + "\n")
        out.flush()


def number(p):
    return p.as_double if p.WhichOneof("value") == "as_double" else p.as_int


def record_metrics(request, transport, out):
    """Writes every data point of an ExportMetricsServiceRequest as a JSON
    line, then a metrics_done line naming the request."""
    lines = []
    for rm in request.resource_metrics:
        resource = attributes(rm.resource.attributes)
        for sm in rm.scope_metrics:
            for m in sm.metrics:
                kind = m.WhichOneof("data")
                base = {
                    "signal": "metric",
                    "transport": transport,
                    "name": m.name,
                    "unit": m.unit,
                    "description": m.description,
                    "kind": kind,
                    "scope": sm.scope.name,
                    "resource": resource,
                }
                if kind == "sum":
                    base["monotonic"] = m.sum.is_monotonic
                    base["temporality"] = m.sum.aggregation_temporality
                    points = [dict(value=number(p)) for p in m.sum.data_points]
                    raw = m.sum.data_points
                elif kind == "gauge":
                    points = [dict(value=number(p)) for p in m.gauge.data_points]
                    raw = m.gauge.data_points
                elif kind == "histogram":
                    base["temporality"] = m.histogram.aggregation_temporality
                    points = [
                        dict(
                            count=p.count,
                            sum=p.sum,
                            bounds=list(p.explicit_bounds),
                            buckets=list(p.bucket_counts),
                        )
                        for p in m.histogram.data_points
                    ]
                    raw = m.histogram.data_points
                else:
                    points, raw = [], []
                    base["unsupported"] = True
                for point, p in zip(points, raw):
                    point.update(base)
                    point["attributes"] = attributes(p.attributes)
                    point["start_unix_nano"] = p.start_time_unix_nano
                    point["time_unix_nano"] = p.time_unix_nano
                    lines.append(json.dumps(point, sort_keys=True))
    with _lock:
        _metrics_requests[0] += 1
        n = _metrics_requests[0]
        for line in lines:
            out.write(line + "\n")
        out.write(json.dumps({"signal": "metrics_done", "transport": transport, "request": n}) + "\n")
        out.flush()


class MetricsService(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, out):
        self.out = out

    def Export(self, request, context):
        record_metrics(request, "grpc", self.out)
        return metrics_service_pb2.ExportMetricsServiceResponse()


class TraceService(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, out):
        self.out = out

    def Export(self, request, context):
        record(request, "grpc", self.out)
        return trace_service_pb2.ExportTraceServiceResponse()


def http_handler(out):
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            signals = {
                "/v1/traces": (trace_service_pb2.ExportTraceServiceRequest, record,
                               trace_service_pb2.ExportTraceServiceResponse),
                "/v1/metrics": (metrics_service_pb2.ExportMetricsServiceRequest, record_metrics,
                                metrics_service_pb2.ExportMetricsServiceResponse),
            }
            if self.path not in signals:
                self.send_error(404)
                return
            message, write, response = signals[self.path]
            if self.headers.get("Content-Type") != "application/x-protobuf":
                self.send_error(415, "want application/x-protobuf")
                return
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            request = message()
            try:
                request.ParseFromString(body)
            except Exception as e:  # a malformed body is the sender's bug: say so
                self.send_error(400, str(e))
                return
            write(request, "http", out)
            reply = response().SerializeToString()
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args):
            pass  # stdout carries the spans only

    return Handler


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--grpc-port", type=int, default=0)
    ap.add_argument("--http-port", type=int, default=0)
    ap.add_argument("--out", help="file for the span lines (default: stdout)")
    args = ap.parse_args()
    out = open(args.out, "a", buffering=1) if args.out else sys.stdout

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(TraceService(out), server)
    metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(MetricsService(out), server)
    grpc_port = server.add_insecure_port(f"127.0.0.1:{args.grpc_port}")
    if grpc_port == 0:
        sys.exit(f"cannot listen on 127.0.0.1:{args.grpc_port} for gRPC")
    server.start()

    httpd = ThreadingHTTPServer(("127.0.0.1", args.http_port), http_handler(out))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()

    with _lock:
        sys.stdout.write(json.dumps({"ready": {"grpc": grpc_port, "http": httpd.server_address[1]}}) + "\n")
        sys.stdout.flush()

    # Until the parent closes our stdin (or dies).
    while sys.stdin.buffer.read(4096):
        pass
    httpd.shutdown()
    server.stop(0)


if __name__ == "__main__":
    main()
