#!/usr/bin/env python3
"""Writes pmoas's Grafana dashboards, grafana/dashboards/*.json, from the
definitions below (Python standard library only).

    python3 grafana/generate.py           # rewrite the JSON files
    python3 grafana/generate.py --check   # exit 1 if a committed file differs

Edit this file, not the JSON: exporter/tests/e2e_prometheus.rs checks that
the committed JSON is this script's output, that every dashboard has the
datasource/namespace/pod/container variables and a datasource on every panel,
that every metric is in the README's reference, and (as root, with the
testbed) that every panel's and variable's PromQL returns data from a real
Prometheus that scraped the exporter under traffic.

Every panel and query variable names its datasource through the `datasource`
template variable, never a fixed uid and never an `__inputs` placeholder
(`${DS_...}`): file provisioning does not substitute `__inputs`, the
variable works both when provisioned and when imported by hand.
"""

import json
import pathlib
import sys

DS = {"type": "prometheus", "uid": "${datasource}"}

# Selectors of the template variables. W: the workload labels.
W = 'namespace=~"$namespace", pod=~"$pod", container=~"$container"'
POD = 'namespace=~"$namespace", pod=~"$pod"'
INST = 'instance=~"$instance"'
RI = "$__rate_interval"


def target(expr, legend="", fmt="time_series", instant=False):
    t = {"datasource": DS, "editorMode": "code", "expr": expr, "legendFormat": legend, "range": not instant}
    if instant:
        t["instant"] = True
    if fmt != "time_series":
        t["format"] = fmt
    return t


def _panel(kind, title, description, targets, w, h, field_config, options, **extra):
    for ref, t in zip("ABCDEFGH", targets):
        t["refId"] = ref
    p = {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DS,
        "gridPos": {"w": w, "h": h},
        "fieldConfig": field_config,
        "options": options,
        "targets": targets,
    }
    p.update(extra)
    return p


def both(a, b):
    """a + b where a series of either side alone counts too (as the rules
    do): each side or-ed with the other times 0."""
    return f"({a} or 0 * {b}) + ({b} or 0 * {a})"


def _thresholds(steps):
    return {"mode": "absolute", "steps": [{"color": c, "value": v} for c, v in steps]}


def timeseries(title, description, targets, unit="short", w=12, h=8, stack=False, negative=None, minimum=0):
    """A time series panel; `negative` is a legend regex drawn below the axis
    (transmit under receive)."""
    defaults = {
        "unit": unit,
        "color": {"mode": "palette-classic"},
        "custom": {
            "drawStyle": "line",
            "lineWidth": 1,
            "fillOpacity": 20 if stack else 10,
            "showPoints": "never",
            "spanNulls": False,
            "stacking": {"mode": "normal" if stack else "none", "group": "A"},
        },
    }
    if minimum is not None and negative is None:
        defaults["min"] = minimum
    overrides = []
    if negative:
        overrides.append(
            {
                "matcher": {"id": "byRegexp", "options": negative},
                "properties": [{"id": "custom.transform", "value": "negative-Y"}],
            }
        )
    options = {
        "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True, "calcs": []},
        "tooltip": {"mode": "multi", "sort": "desc"},
    }
    return _panel(
        "timeseries", title, description, targets, w, h, {"defaults": defaults, "overrides": overrides}, options
    )


def stat(title, description, targets, unit="short", w=6, h=4, steps=None, mappings=None, graph=False):
    defaults = {
        "unit": unit,
        "color": {"mode": "thresholds"},
        "thresholds": _thresholds(steps or [("green", None)]),
        "mappings": mappings or [],
    }
    options = {
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        "colorMode": "value",
        "graphMode": "area" if graph else "none",
        "justifyMode": "auto",
        "orientation": "auto",
        "textMode": "auto",
    }
    return _panel("stat", title, description, targets, w, h, {"defaults": defaults, "overrides": []}, options)


def bargauge(title, description, targets, unit="short", w=12, h=8):
    defaults = {
        "unit": unit,
        "min": 0,
        "color": {"mode": "continuous-GrYlRd"},
        "thresholds": _thresholds([("green", None)]),
    }
    options = {
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        "displayMode": "gradient",
        "orientation": "horizontal",
        "showUnfilled": True,
    }
    return _panel("bargauge", title, description, targets, w, h, {"defaults": defaults, "overrides": []}, options)


def heatmap(title, description, expr, unit="s", w=12, h=8):
    """A heatmap of a Prometheus histogram's buckets (`expr` sums a rate of
    `_bucket` by `le`); Grafana turns the cumulative buckets into counts."""
    options = {
        "calculate": False,
        "cellGap": 1,
        "color": {"mode": "scheme", "scheme": "Oranges", "exponent": 0.5, "fill": "dark-orange", "reverse": False,
                  "steps": 64},
        "exemplars": {"color": "rgba(255,0,255,0.7)"},
        "filterValues": {"le": 1e-9},
        "legend": {"show": True},
        "rowsFrame": {"layout": "auto"},
        "tooltip": {"mode": "single", "show": True, "yHistogram": True},
        "yAxis": {"axisPlacement": "left", "unit": unit, "reverse": False},
    }
    return _panel(
        "heatmap",
        title,
        description,
        [target(expr, "{{le}}", fmt="heatmap")],
        w,
        h,
        {"defaults": {"custom": {"hideFrom": {"legend": False, "tooltip": False, "viz": False}}}, "overrides": []},
        options,
    )


def table(title, description, expr, hide=("Time", "__name__", "job"), unit="short", w=12, h=8, mappings=None,
          steps=None, color_value=False):
    """An instant query shown as a table, one row per series."""
    defaults = {
        "unit": unit,
        "custom": {"align": "auto", "cellOptions": {"type": "auto"}},
        "thresholds": _thresholds(steps or [("green", None)]),
        "mappings": mappings or [],
    }
    overrides = []
    if color_value:
        overrides.append(
            {
                "matcher": {"id": "byName", "options": "Value"},
                "properties": [{"id": "custom.cellOptions", "value": {"type": "color-background"}}],
            }
        )
    return _panel(
        "table",
        title,
        description,
        [target(expr, fmt="table", instant=True)],
        w,
        h,
        {"defaults": defaults, "overrides": overrides},
        {"showHeader": True, "cellHeight": "sm", "footer": {"show": False, "reducer": ["sum"], "fields": ""}},
        transformations=[{"id": "organize", "options": {"excludeByName": {k: True for k in hide}}}],
    )


def row(title):
    return {"type": "row", "title": title, "collapsed": False, "panels": [], "gridPos": {"w": 24, "h": 1}}


def text(content, w=24, h=3):
    return {"type": "text", "title": "", "gridPos": {"w": w, "h": h},
            "options": {"mode": "markdown", "content": content}}


def variable(name, label, query, multi=True):
    v = {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DS,
        "definition": query,
        "query": {"query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
        "refresh": 2,
        "regex": "",
        "sort": 1,
        "hide": 0,
        "multi": multi,
        "includeAll": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "options": [],
    }
    return v


def templating(instance=False):
    out = [
        {
            "name": "datasource",
            "label": "Data source",
            "type": "datasource",
            "query": "prometheus",
            "regex": "",
            "hide": 0,
            "refresh": 1,
            "current": {"selected": True, "text": "default", "value": "default"},
            "options": [],
        }
    ]
    if instance:
        out.append(variable("instance", "Instance", "label_values(pmoas_build_info, instance)"))
    out += [
        variable("namespace", "Namespace", "label_values(pmoas_container_info, namespace)"),
        variable("pod", "Pod", 'label_values(pmoas_container_info{namespace=~"$namespace"}, pod)'),
        variable(
            "container",
            "Container",
            'label_values(pmoas_container_info{namespace=~"$namespace", pod=~"$pod"}, container)',
        ),
    ]
    return out


def layout(panels):
    """Ids in order, and grid positions: left to right, a new line when the
    next panel does not fit; a row starts a new line."""
    x = y = line_h = 0
    for i, p in enumerate(panels, start=1):
        p["id"] = i
        w, h = p["gridPos"]["w"], p["gridPos"]["h"]
        if p["type"] == "row" or x + w > 24:
            x, y, line_h = 0, y + line_h, 0
        p["gridPos"] = {"h": h, "w": w, "x": x, "y": y}
        x += w
        line_h = max(line_h, h)
        if p["type"] == "row":
            x, y, line_h = 0, y + h, 0
    return panels


def annotation(name, expr, title, text, color):
    """A Prometheus annotation: a region on every panel while `expr` is
    non-zero (Grafana joins consecutive points into one region)."""
    return {"datasource": DS, "enable": True, "hide": False, "iconColor": color, "name": name, "expr": expr,
            "step": "30s", "titleFormat": title, "textFormat": text, "tagKeys": "instance",
            "useValueForTime": False}


def dashboard(uid, title, description, panels, instance=False, tags=(), annotations=()):
    return {
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                },
                *annotations,
            ]
        },
        "description": description,
        "editable": True,
        "fiscalYearStartMonth": 0,
        "graphTooltip": 1,
        "id": None,
        "links": [
            {"asDropdown": True, "includeVars": True, "keepTime": True, "tags": ["pmoas"], "title": "pmoas",
             "type": "dashboards"}
        ],
        "panels": layout(panels),
        "refresh": "30s",
        "schemaVersion": 39,
        "tags": ["pmoas", *tags],
        "templating": {"list": templating(instance)},
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "title": title,
        "uid": uid,
        "version": 1,
        "weekStart": "",
    }


# ---------------------------------------------------------------- node

UP_MAPPINGS = [
    {"type": "value", "options": {"0": {"text": "down", "color": "red", "index": 0},
                                  "1": {"text": "up", "color": "green", "index": 1}}}
]
RED_BELOW_1 = [("red", None), ("green", 1)]


def node():
    return dashboard(
        "pmoas-node",
        "pmoas / Node overview",
        "Is pmoas healthy on each node, and what does it cost: collectors, eBPF programs, lost events, "
        "eBPF run time, scrape cost, push and OTLP delivery; and the node's busiest workloads.",
        [
            row("Exporter"),
            stat(
                "Exporter up",
                "Prometheus's own `up` for each pmoas target seen in the last day: 1 the last scrape worked, "
                "0 it failed (the exporter is down or unreachable).",
                [target(
                    f"up and on (job, instance) last_over_time(pmoas_build_info{{{INST}}}[1d])", "{{instance}}"
                )],
                w=4, steps=RED_BELOW_1, mappings=UP_MAPPINGS,
            ),
            stat(
                "Collectors answering",
                "`pmoas_scrape_collector_success`, the lowest over the selected instances, per collector: 1 every "
                "instance's collector answered its last scrape, 0 at least one failed (the landing page `/` of "
                "that exporter says why; alert PmoasCollectorFailing).",
                [target(f"min by (collector) (pmoas_scrape_collector_success{{{INST}}})", "{{collector}}")],
                w=8, steps=RED_BELOW_1, mappings=UP_MAPPINGS,
            ),
            stat(
                "Degraded features",
                "How many features run degraded (`pmoas_feature_degraded`: a missing capability, a broken host "
                "path). 0 is healthy; otherwise the landing page and the log name each one and what to grant.",
                [target(f"count(pmoas_feature_degraded{{{INST}}} == 1) or vector(0)", "degraded")],
                w=4, steps=[("green", None), ("orange", 1)],
            ),
            stat(
                "Last configuration reload",
                "`pmoas_config_last_reload_successful`, the lowest over the instances: 1 the last SIGHUP "
                "reload (or the start) loaded, 0 the file did not load and the previous settings stay.",
                [target(f"min(pmoas_config_last_reload_successful{{{INST}}})", "reload")],
                w=4, steps=RED_BELOW_1,
                mappings=[{"type": "value", "options": {"0": {"text": "failed", "color": "red", "index": 0},
                                                        "1": {"text": "ok", "color": "green", "index": 1}}}],
            ),
            stat(
                "Series per scrape",
                "Samples in the last scrape of each instance (Prometheus's `scrape_samples_scraped`): the "
                "exporter's cardinality, which grows with pods, peers and drop reasons.",
                [target(
                    f"scrape_samples_scraped and on (job, instance) pmoas_build_info{{{INST}}}", "{{instance}}"
                )],
                w=4,
            ),
            table(
                "Builds",
                "`pmoas_build_info`: version and revision each instance runs.",
                f"pmoas_build_info{{{INST}}}",
                hide=("Time", "__name__", "job", "Value"), w=8, h=6,
            ),
            table(
                "Workloads known",
                "`pmoas_discovery_workloads`: pods and containers each discovery source knows now "
                "(`kubernetes`, `engine` for Docker/Podman, `cgroupfs` from cgroup paths). All zero with "
                "pods running means discovery cannot see them.",
                f"sum by (instance, source, kind) (pmoas_discovery_workloads{{{INST}}})",
                w=8, h=6,
            ),
            timeseries(
                "Discovery errors",
                "Failures of each discovery source per second (`pmoas_discovery_errors_total`): API errors, "
                "unreadable sockets or cgroups, a host path that stopped being a mount. Should stay at 0.",
                [target(
                    f"sum by (instance, source) (rate(pmoas_discovery_errors_total{{{INST}}}[{RI}]))",
                    "{{instance}} {{source}}",
                )],
                unit="cps", w=8, h=6,
            ),
            timeseries(
                "Exporter CPU",
                "CPU the exporter process itself uses, in cores (`process_cpu_seconds_total`). The eBPF "
                "programs' time is not in it: it is spent in the traced tasks (panel \"eBPF run time\").",
                [target(
                    f'rate(process_cpu_seconds_total{{{INST}}}[{RI}]) and on (job, instance) pmoas_build_info',
                    "{{instance}}",
                )],
                unit="short", w=12, h=6,
            ),
            timeseries(
                "Exporter memory",
                "Resident memory of the exporter process (`process_resident_memory_bytes`); kernel map memory is "
                "not in it.",
                [target(
                    f'process_resident_memory_bytes{{{INST}}} and on (job, instance) pmoas_build_info',
                    "{{instance}}",
                )],
                unit="bytes", w=12, h=6,
            ),
            row("eBPF programs"),
            stat(
                "Programs attached",
                "eBPF programs attached per collector (`pmoas_ebpf_program_attached`, summed over instances). "
                "netstack's stage programs count as attached between their sampling windows.",
                [target(f"sum by (collector) (pmoas_ebpf_program_attached{{{INST}}})", "{{collector}}")],
                w=6, h=6,
            ),
            stat(
                "Programs not attached",
                "eBPF programs that are not attached, per instance (0 is healthy). Their metrics are missing "
                "or partial; the table beside names them and the landing page gives the kernel's reason "
                "(alert PmoasProgramDetached).",
                [target(
                    f"count by (instance) (pmoas_ebpf_program_attached{{{INST}}} == 0) "
                    f"or sum by (instance) (0 * pmoas_ebpf_program_attached{{{INST}}})",
                    "{{instance}}",
                )],
                w=6, h=6, steps=[("green", None), ("red", 1)],
            ),
            table(
                "Programs",
                "Every eBPF program of every collector with its hook: 1 attached, 0 not.",
                f"pmoas_ebpf_program_attached{{{INST}}}",
                w=12, h=6, steps=RED_BELOW_1, color_value=True,
                mappings=[{"type": "value", "options": {"0": {"text": "detached", "color": "red", "index": 0},
                                                        "1": {"text": "attached", "color": "green", "index": 1}}}],
            ),
            timeseries(
                "Lost events",
                "What the kernel side could not record, per second, by collector and reason "
                "(`pmoas_ebpf_events_lost_total`): `*_map_full` means a map is too small for this node (raise "
                "the collector's max setting), `recursion` means runs skipped on a busy CPU. Should be 0; any "
                "loss means the counts of that collector are low (alert PmoasEventsLost).",
                [target(
                    f"sum by (collector, reason) (rate(pmoas_ebpf_events_lost_total{{{INST}}}[{RI}]))",
                    "{{collector}} {{reason}}",
                )],
                unit="cps",
            ),
            timeseries(
                "eBPF run time",
                "CPU time spent in each collector's eBPF programs, in cores (seconds per second), taken from "
                "the traced tasks (`pmoas_ebpf_program_run_seconds_total`). The kernel counts it only while "
                "`sysctl kernel.bpf_stats_enabled=1`: flat 0 otherwise.",
                [target(
                    f"sum by (collector) (rate(pmoas_ebpf_program_run_seconds_total{{{INST}}}[{RI}]))",
                    "{{collector}}",
                )],
                unit="short", stack=True,
            ),
            timeseries(
                "eBPF runs",
                "Runs per second of each eBPF program (`pmoas_ebpf_program_runs_total`), counted while "
                "`kernel.bpf_stats_enabled=1`. Run time over runs is the cost of one run.",
                [target(
                    f"sum by (collector, program) (rate(pmoas_ebpf_program_runs_total{{{INST}}}[{RI}]))",
                    "{{collector}} {{program}}",
                )],
                unit="cps",
            ),
            timeseries(
                "Collector scrape time",
                "How long each collector took to answer a scrape (`pmoas_scrape_collector_duration_seconds`), "
                "the slowest instance. Close to the scrape timeout means scrapes may fail.",
                [target(
                    f"max by (collector) (pmoas_scrape_collector_duration_seconds{{{INST}}})", "{{collector}}"
                )],
                unit="s",
            ),
            row("Delivery: Pushgateway and OTLP"),
            timeseries(
                "Pushes to the Pushgateway",
                "Pushes per second by result (`pmoas_push_requests_total`, with `--push.gateway-url`): any "
                "`error` means the gateway's copy is getting old (alert PmoasPushFailing). No series without "
                "push configured.",
                [target(
                    f"sum by (instance, result) (rate(pmoas_push_requests_total{{{INST}}}[{RI}]))",
                    "{{instance}} {{result}}",
                )],
                unit="cps", w=8,
            ),
            stat(
                "Last successful push",
                "When the metrics last reached the Pushgateway (`pmoas_push_last_success_timestamp_seconds`); "
                "`never` before the first successful push.",
                [target(f"max by (instance) (pmoas_push_last_success_timestamp_seconds{{{INST}}}) * 1000",
                        "{{instance}}")],
                unit="dateTimeFromNow", w=4, h=8,
                mappings=[{"type": "value", "options": {"0": {"text": "never", "color": "orange", "index": 0}}}],
            ),
            timeseries(
                "OTLP spans",
                "Spans of the sampled packet traces per second (with `--otlp.endpoint`): handed to the OTLP "
                "pipeline, accepted by the receiver, and dropped by reason (`queue_full`, `export_failed`, "
                "`invalid`, `shutdown`). Submitted = exported + dropped + queued.",
                [
                    target(f"sum by (instance) (rate(pmoas_otlp_spans_submitted_total{{{INST}}}[{RI}]))",
                           "{{instance}} submitted"),
                    target(f"sum by (instance) (rate(pmoas_otlp_spans_exported_total{{{INST}}}[{RI}]))",
                           "{{instance}} exported"),
                    target(f"sum by (instance, reason) (rate(pmoas_otlp_spans_dropped_total{{{INST}}}[{RI}]))",
                           "{{instance}} dropped {{reason}}"),
                ],
                unit="cps", w=12,
            ),
            timeseries(
                "OTLP export requests",
                "OTLP export requests per second by result (`pmoas_otlp_export_requests_total`); `error` "
                "requests drop their spans as `export_failed`.",
                [target(
                    f"sum by (instance, result) (rate(pmoas_otlp_export_requests_total{{{INST}}}[{RI}]))",
                    "{{instance}} {{result}}",
                )],
                unit="reqps",
            ),
            timeseries(
                "OTLP queue",
                "Spans waiting to be exported, and the queue's size (`pmoas_otlp_queue_spans`, "
                "`pmoas_otlp_queue_capacity_spans`): a queue at capacity drops new spans as `queue_full`.",
                [
                    target(f"max by (instance) (pmoas_otlp_queue_spans{{{INST}}})", "{{instance}} queued"),
                    target(f"max by (instance) (pmoas_otlp_queue_capacity_spans{{{INST}}})",
                           "{{instance}} capacity"),
                ],
            ),
            timeseries(
                "OTLP metric exports",
                "Metric exports over OTLP per second by result (`pmoas_otlp_metrics_exports_total`, with "
                "`--otlp.metrics-endpoint`), and data points the receiver rejected or that were in failed "
                "exports (`pmoas_otlp_metrics_points_total`). No series without OTLP metrics configured.",
                [
                    target(f"sum by (instance, result) (rate(pmoas_otlp_metrics_exports_total{{{INST}}}[{RI}]))",
                           "{{instance}} exports {{result}}"),
                    target(f'sum by (instance, result) (rate(pmoas_otlp_metrics_points_total{{{INST}, '
                           f'result!="accepted"}}[{RI}]))', "{{instance}} points {{result}}"),
                ],
                unit="cps", w=12,
            ),
            stat(
                "Last OTLP metric export",
                "When an OTLP metric export last succeeded (`pmoas_otlp_metrics_last_success_timestamp_seconds`); "
                "`never` before the first.",
                [target(f"max by (instance) (pmoas_otlp_metrics_last_success_timestamp_seconds{{{INST}}}) * 1000",
                        "{{instance}}")],
                unit="dateTimeFromNow", w=4, h=8,
                mappings=[{"type": "value", "options": {"0": {"text": "never", "color": "orange", "index": 0}}}],
            ),
            row("Workloads on the node"),
            timeseries(
                "CPU by container (top 10)",
                "The ten containers using the most CPU, in cores (`pmoas_container_cpu_usage_seconds_total`). "
                "The pod dashboards break it down further.",
                [target(
                    f'topk(10, sum by (namespace, pod, container, role) (rate(pmoas_container_cpu_usage_seconds_total'
                    f'{{{INST}, {W}, container!=""}}[{RI}])))',
                    "{{namespace}}/{{pod}} {{container}} {{role}}",
                )],
            ),
            timeseries(
                "Memory by container (top 10)",
                "The ten containers with the largest working set (`pmoas_container_memory_working_set_bytes`: "
                "usage minus inactive file cache, what the kubelet evicts by).",
                [target(
                    f'topk(10, sum by (namespace, pod, container, role) (pmoas_container_memory_working_set_bytes'
                    f'{{{INST}, {W}, container!=""}}))',
                    "{{namespace}}/{{pod}} {{container}} {{role}}",
                )],
                unit="bytes",
            ),
            timeseries(
                "Pod network (top 10)",
                "Bytes per second through each pod's interfaces other than `lo`, received and transmitted "
                "(`pmoas_pod_network_*_bytes_total`), the ten busiest pods; transmit is drawn below the axis.",
                [
                    target(f'topk(10, sum by (namespace, pod) (rate(pmoas_pod_network_receive_bytes_total'
                           f'{{{INST}, {POD}, interface!="lo"}}[{RI}])))', "{{namespace}}/{{pod}} received"),
                    target(f'topk(10, sum by (namespace, pod) (rate(pmoas_pod_network_transmit_bytes_total'
                           f'{{{INST}, {POD}, interface!="lo"}}[{RI}])))', "{{namespace}}/{{pod}} transmitted"),
                ],
                unit="Bps", negative=".*transmitted",
            ),
            timeseries(
                "TCP connections opened (top 10)",
                "Connects plus accepts per second of the ten busiest workloads (`pmoas_tcp_connects_total`, "
                "`pmoas_tcp_accepts_total`).",
                [target(
                    "topk(10, " + both(
                        f"sum by (namespace, pod, container, role) (rate(pmoas_tcp_connects_total{{{INST}, {W}}}[{RI}]))",
                        f"sum by (namespace, pod, container, role) (rate(pmoas_tcp_accepts_total{{{INST}, {W}}}[{RI}]))",
                    ) + ")",
                    "{{namespace}}/{{pod}} {{container}} {{role}}",
                )],
                unit="cps",
            ),
        ],
        instance=True,
        tags=("node",),
    )


# ---------------------------------------------------------------- pod and sidecar

def pod_sidecar():
    return dashboard(
        "pmoas-pod-sidecar",
        "pmoas / Pod and sidecar cost",
        "What the sidecar costs each pod next to its app: CPU, memory, network, connection churn, "
        "accept-queue wait, handshake time, retransmits and resets.",
        [
            row("CPU and memory"),
            stat(
                "Sidecar share of CPU",
                "The sidecar's share of its pod's CPU over 5 minutes (recording rule "
                "`namespace_pod:pmoas_sidecar_cpu_share:ratio5m`), per pod. Above 50% for 30 minutes fires "
                "PmoasSidecarCpuShareHigh. Empty for pods without a recognised sidecar.",
                [target(f"namespace_pod:pmoas_sidecar_cpu_share:ratio5m{{{POD}}}", "{{namespace}}/{{pod}}")],
                unit="percentunit", w=12, h=5, steps=[("green", None), ("orange", 0.3), ("red", 0.5)], graph=True,
            ),
            stat(
                "Sidecar share of memory",
                "The sidecar's share of its pod's working set (recording rule "
                "`namespace_pod:pmoas_sidecar_memory_share:ratio`), per pod.",
                [target(f"namespace_pod:pmoas_sidecar_memory_share:ratio{{{POD}}}", "{{namespace}}/{{pod}}")],
                unit="percentunit", w=12, h=5, steps=[("green", None), ("orange", 0.3), ("red", 0.5)], graph=True,
            ),
            timeseries(
                "CPU: sidecar vs app",
                "CPU per pod and role in cores, over 5 minutes (recording rule "
                "`namespace_pod_container:pmoas_container_cpu_usage_seconds:rate5m`). `sidecar` is the "
                "mesh's cost, `app` the work itself; an empty role is a container neither.",
                [target(
                    f"sum by (namespace, pod, role) (namespace_pod_container:pmoas_container_cpu_usage_seconds:rate5m"
                    f"{{{W}}})",
                    "{{namespace}}/{{pod}} {{role}}",
                )],
                stack=True,
            ),
            timeseries(
                "Memory: sidecar vs app",
                "Working set per pod and role (`pmoas_container_memory_working_set_bytes`, containers only).",
                [target(
                    f'sum by (namespace, pod, role) (pmoas_container_memory_working_set_bytes{{{W}, container!=""}})',
                    "{{namespace}}/{{pod}} {{role}}",
                )],
                unit="bytes", stack=True,
            ),
            row("Network"),
            timeseries(
                "Network: sidecar vs app",
                "IP bytes per second of each container's sockets (`pmoas_container_network_*_bytes_total`, "
                "counted per container even inside the pod's shared network namespace); transmit below the "
                "axis. Through a sidecar, every byte the app exchanges crosses it twice.",
                [
                    target(f'sum by (namespace, pod, role) (rate(pmoas_container_network_receive_bytes_total'
                           f'{{{W}, container!=""}}[{RI}]))', "{{namespace}}/{{pod}} {{role}} received"),
                    target(f'sum by (namespace, pod, role) (rate(pmoas_container_network_transmit_bytes_total'
                           f'{{{W}, container!=""}}[{RI}]))', "{{namespace}}/{{pod}} {{role}} transmitted"),
                ],
                unit="Bps", negative=".*transmitted",
            ),
            timeseries(
                "Pod interfaces",
                "Bytes per second through each of the pod's interfaces (`pmoas_pod_network_*_bytes_total`). "
                "`lo` carries the sidecar-app hop: its size next to `eth0` is the traffic the mesh adds "
                "inside the pod. Transmit below the axis.",
                [
                    target(f"sum by (namespace, pod, interface) (rate(pmoas_pod_network_receive_bytes_total"
                           f"{{{POD}}}[{RI}]))", "{{namespace}}/{{pod}} {{interface}} received"),
                    target(f"sum by (namespace, pod, interface) (rate(pmoas_pod_network_transmit_bytes_total"
                           f"{{{POD}}}[{RI}]))", "{{namespace}}/{{pod}} {{interface}} transmitted"),
                ],
                unit="Bps", negative=".*transmitted",
            ),
            timeseries(
                "Pod interface packets",
                "Packets per second through each of the pod's interfaces (`pmoas_pod_network_receive_packets_total`, "
                "`pmoas_pod_network_transmit_packets_total`): many small packets on `lo` cost the sidecar CPU "
                "even when the bytes are few. Transmit below the axis.",
                [
                    target(f"sum by (namespace, pod, interface) (rate(pmoas_pod_network_receive_packets_total"
                           f"{{{POD}}}[{RI}]))", "{{namespace}}/{{pod}} {{interface}} received"),
                    target(f"sum by (namespace, pod, interface) (rate(pmoas_pod_network_transmit_packets_total"
                           f"{{{POD}}}[{RI}]))", "{{namespace}}/{{pod}} {{interface}} transmitted"),
                ],
                unit="pps", negative=".*transmitted",
            ),
            timeseries(
                "Sidecar hop accelerated (sockops)",
                "Share of the bytes sent over in-pod connections (sidecar to app and back) that went socket "
                "to socket by redirect instead of through TCP/IP and `lo`, per pod, over 5 minutes (recording "
                "rule `namespace_pod:pmoas_sockops_accelerated_bytes:ratio5m`; the sockops dashboard has the "
                "rest). Empty without the sockops collector (`--collectors ...,sockops`) or without in-pod "
                "traffic.",
                [target(f"namespace_pod:pmoas_sockops_accelerated_bytes:ratio5m{{{POD}}}", "{{namespace}}/{{pod}}")],
                unit="percentunit",
            ),
            row("Connections"),
            timeseries(
                "Connection churn",
                "TCP connections opened (connects + accepts) and failed (connect failures + resets) per "
                "second, per pod (recording rules `namespace_pod:pmoas_tcp_connections_opened:rate5m`, "
                "`namespace_pod:pmoas_tcp_errors:rate5m`). A sidecar opens one to the app for each one "
                "it accepts unless it pools them.",
                [
                    target(f"namespace_pod:pmoas_tcp_connections_opened:rate5m{{{POD}}}", "{{namespace}}/{{pod}} opened"),
                    target(f"namespace_pod:pmoas_tcp_errors:rate5m{{{POD}}}", "{{namespace}}/{{pod}} errors"),
                ],
                unit="cps",
            ),
            timeseries(
                "Connections by role and peer",
                "Connects (we opened) and accepts (we were connected to) per second by role and peer: "
                "`sidecar`→`app` is the sidecar's hop into the app, `node`/`remote` is the world outside the pod.",
                [
                    target(f"sum by (namespace, pod, role, peer) (rate(pmoas_tcp_connects_total{{{W}}}[{RI}]))",
                           "{{pod}} {{role}} connects to {{peer}}"),
                    target(f"sum by (namespace, pod, role, peer) (rate(pmoas_tcp_accepts_total{{{W}}}[{RI}]))",
                           "{{pod}} {{role}} accepts from {{peer}}"),
                ],
                unit="cps",
            ),
            timeseries(
                "Handshake time p99",
                "99th percentile of SYN sent → ESTABLISHED over 5 minutes, per pod and role (recording rule "
                "`namespace_pod_role:pmoas_tcp_connect_duration_seconds:p99_5m`): the time a connect waits "
                "for its peer; a retransmitted SYN shows as a second or more.",
                [target(f"namespace_pod_role:pmoas_tcp_connect_duration_seconds:p99_5m{{{POD}}}",
                        "{{namespace}}/{{pod}} {{role}}")],
                unit="s",
            ),
            timeseries(
                "Accept-queue wait p99",
                "99th percentile of ESTABLISHED → accept() over 5 minutes, per pod and role (recording rule "
                "`namespace_pod_role:pmoas_tcp_accept_wait_seconds:p99_5m`): how long a connection waits for "
                "the process to take it; growing waits mean the sidecar or app cannot keep up.",
                [target(f"namespace_pod_role:pmoas_tcp_accept_wait_seconds:p99_5m{{{POD}}}",
                        "{{namespace}}/{{pod}} {{role}}")],
                unit="s",
            ),
            timeseries(
                "Retransmits",
                "Retransmitted TCP segments per second by pod and role (`pmoas_tcp_retransmits_total`), counted "
                "for the container that sent them: its segments, or the ACKs for them, were lost on the way.",
                [target(f"sum by (namespace, pod, role) (rate(pmoas_tcp_retransmits_total{{{W}}}[{RI}]))",
                        "{{namespace}}/{{pod}} {{role}}")],
                unit="cps", w=8,
            ),
            timeseries(
                "Retransmit ratio",
                "Retransmitted segments over the packets the pod's containers sent, over 5 minutes (recording "
                "rule `namespace_pod:pmoas_tcp_retransmits:ratio5m`). Above 2% for 10 minutes fires "
                "PmoasTcpRetransmitRatioHigh.",
                [target(f"namespace_pod:pmoas_tcp_retransmits:ratio5m{{{POD}}}", "{{namespace}}/{{pod}}")],
                unit="percentunit", w=8,
            ),
            timeseries(
                "Resets",
                "TCP RSTs per second by pod, role and direction (`pmoas_tcp_resets_total`): `sent` by this "
                "container (it refused or aborted), `received` from its peer.",
                [target(
                    f"sum by (namespace, pod, role, direction) (rate(pmoas_tcp_resets_total{{{W}}}[{RI}]))",
                    "{{pod}} {{role}} {{direction}}",
                )],
                unit="cps", w=8,
            ),
        ],
        tags=("sidecar",),
    )


# ---------------------------------------------------------------- socket

def socket():
    return dashboard(
        "pmoas-socket",
        "pmoas / Socket collector (TCP)",
        "The socket collector in depth: TCP connects and accepts between sidecar, app and the rest, handshake, "
        "accept-queue and lifetime distributions, bytes, retransmits and resets.",
        [
            row("Connections"),
            timeseries(
                "Connects",
                "Active opens that reached ESTABLISHED per second (`pmoas_tcp_connects_total`), by role and "
                "peer (`sidecar`, `app`, `pod`, `node`, `remote`).",
                [target(f"sum by (role, peer) (rate(pmoas_tcp_connects_total{{{W}}}[{RI}]))",
                        "{{role}} to {{peer}}")],
                unit="cps", w=8,
            ),
            timeseries(
                "Accepts",
                "Passive opens that reached ESTABLISHED per second, counted for the listening workload "
                "(`pmoas_tcp_accepts_total`), by role and peer.",
                [target(f"sum by (role, peer) (rate(pmoas_tcp_accepts_total{{{W}}}[{RI}]))",
                        "{{role}} from {{peer}}")],
                unit="cps", w=8,
            ),
            timeseries(
                "Connect failures",
                "Active opens that never reached ESTABLISHED per second (`pmoas_tcp_connect_failures_total`): "
                "refused, reset or timed out. A sidecar failing to the `app` means the app is not listening.",
                [target(f"sum by (role, peer) (rate(pmoas_tcp_connect_failures_total{{{W}}}[{RI}]))",
                        "{{role}} to {{peer}}")],
                unit="cps", w=8,
            ),
            row("Latency"),
            heatmap(
                "Handshake time",
                "SYN sent → ESTABLISHED of the selected workloads (`pmoas_tcp_connect_duration_seconds`), "
                "connections per bucket over time; darker is more. Buckets are powers of 4 of nanoseconds; "
                "a band near 1 s or 3 s is a retransmitted SYN.",
                f"sum by (le) (rate(pmoas_tcp_connect_duration_seconds_bucket{{{W}}}[{RI}]))",
            ),
            timeseries(
                "Handshake time p50 / p99",
                "Median and 99th percentile of the handshake by role and peer (`pmoas_tcp_connect_duration_seconds`); "
                "the p99 per pod and role over 5 minutes is also the recording rule "
                "`namespace_pod_role:pmoas_tcp_connect_duration_seconds:p99_5m`.",
                [
                    target(f"histogram_quantile(0.5, sum by (role, peer, le) "
                           f"(rate(pmoas_tcp_connect_duration_seconds_bucket{{{W}}}[{RI}])))", "p50 {{role}} to {{peer}}"),
                    target(f"histogram_quantile(0.99, sum by (role, peer, le) "
                           f"(rate(pmoas_tcp_connect_duration_seconds_bucket{{{W}}}[{RI}])))", "p99 {{role}} to {{peer}}"),
                ],
                unit="s",
            ),
            heatmap(
                "Accept-queue wait",
                "ESTABLISHED → accept() returned the socket (`pmoas_tcp_accept_wait_seconds`): how long "
                "connections sit in the listen queue before the process takes them.",
                f"sum by (le) (rate(pmoas_tcp_accept_wait_seconds_bucket{{{W}}}[{RI}]))",
            ),
            timeseries(
                "Accept-queue wait p99",
                "99th percentile of the accept-queue wait over 5 minutes per pod and role (recording rule "
                "`namespace_pod_role:pmoas_tcp_accept_wait_seconds:p99_5m`).",
                [target(f"namespace_pod_role:pmoas_tcp_accept_wait_seconds:p99_5m{{{POD}}}",
                        "{{namespace}}/{{pod}} {{role}}")],
                unit="s",
            ),
            heatmap(
                "Connection lifetime",
                "ESTABLISHED → CLOSE of closed connections (`pmoas_tcp_connection_duration_seconds`), both "
                "directions: short-lived connections in bulk are churn a pool would save.",
                f"sum by (le) (rate(pmoas_tcp_connection_duration_seconds_bucket{{{W}}}[{RI}]))",
            ),
            timeseries(
                "Connection lifetime p50",
                "Median lifetime of closed connections by role, peer and direction (`outbound`: we connected, "
                "`inbound`: we accepted).",
                [target(f"histogram_quantile(0.5, sum by (role, peer, direction, le) "
                        f"(rate(pmoas_tcp_connection_duration_seconds_bucket{{{W}}}[{RI}])))",
                        "{{role}} {{direction}} {{peer}}")],
                unit="s",
            ),
            row("Bytes, retransmits, resets"),
            timeseries(
                "Bytes of closed connections",
                "Payload bytes per second, sent (acknowledged) and received, by role and peer "
                "(`pmoas_tcp_sent_bytes_total`, `pmoas_tcp_received_bytes_total`). Counted when a connection "
                "closes, so a long-lived connection shows at its end. Sent below the axis.",
                [
                    target(f"sum by (role, peer) (rate(pmoas_tcp_received_bytes_total{{{W}}}[{RI}]))",
                           "{{role}} from {{peer}} received"),
                    target(f"sum by (role, peer) (rate(pmoas_tcp_sent_bytes_total{{{W}}}[{RI}]))",
                           "{{role}} to {{peer}} sent"),
                ],
                unit="Bps", negative=".*sent", w=24,
            ),
            timeseries(
                "Retransmits by container",
                "Retransmitted segments per second, data and SYN-ACK, by container (`pmoas_tcp_retransmits_total`, "
                "as the kernel counts TcpRetransSegs): loss on the path or an overloaded peer.",
                [target(f"sum by (namespace, pod, container, role) (rate(pmoas_tcp_retransmits_total{{{W}}}[{RI}]))",
                        "{{pod}} {{container}} {{role}}")],
                unit="cps", w=8,
            ),
            timeseries(
                "Retransmit ratio",
                "Retransmitted segments over the packets each pod sent, over 5 minutes (recording rule "
                "`namespace_pod:pmoas_tcp_retransmits:ratio5m`; above 2% fires PmoasTcpRetransmitRatioHigh).",
                [target(f"namespace_pod:pmoas_tcp_retransmits:ratio5m{{{POD}}}", "{{namespace}}/{{pod}}")],
                unit="percentunit", w=8,
            ),
            timeseries(
                "Resets",
                "RSTs per second by role and direction (`pmoas_tcp_resets_total`): `sent` (this workload "
                "refused or aborted a connection), `received` (its peer did).",
                [target(f"sum by (role, direction) (rate(pmoas_tcp_resets_total{{{W}}}[{RI}]))",
                        "{{role}} {{direction}}")],
                unit="cps", w=8,
            ),
        ],
        tags=("socket",),
    )


# ---------------------------------------------------------------- cgroup

def cgroup():
    containers = f'{W}, container!=""'
    return dashboard(
        "pmoas-cgroup",
        "pmoas / Cgroup collector (containers)",
        "CPU, CFS throttling, memory, OOM kills, block I/O and network per container, and each pod's "
        "interfaces.",
        [
            row("CPU"),
            timeseries(
                "CPU by container",
                "CPU in cores per container over 5 minutes (recording rule "
                "`namespace_pod_container:pmoas_container_cpu_usage_seconds:rate5m`).",
                [target(f"namespace_pod_container:pmoas_container_cpu_usage_seconds:rate5m{{{W}}}",
                        "{{pod}} {{container}} {{role}}")],
                stack=True,
            ),
            timeseries(
                "CPU throttled",
                "Time throttled by the CFS quota, in seconds per second (`pmoas_container_cpu_throttled_seconds_total`). "
                "Above 0 means the CPU limit is too tight for the load; 0 without a limit.",
                [target(f"sum by (namespace, pod, container, role) (rate(pmoas_container_cpu_throttled_seconds_total"
                        f"{{{W}}}[{RI}]))", "{{pod}} {{container}} {{role}}")],
                w=6,
            ),
            timeseries(
                "Throttled periods",
                "CFS periods per second in which the container was throttled "
                "(`pmoas_container_cpu_throttled_periods_total`).",
                [target(f"sum by (namespace, pod, container, role) (rate(pmoas_container_cpu_throttled_periods_total"
                        f"{{{W}}}[{RI}]))", "{{pod}} {{container}} {{role}}")],
                unit="cps", w=6,
            ),
            row("Memory"),
            timeseries(
                "Working set",
                "Memory usage minus inactive file cache per container (`pmoas_container_memory_working_set_bytes`): "
                "what the kubelet evicts by and the OOM killer looks at.",
                [target(f"pmoas_container_memory_working_set_bytes{{{containers}}}", "{{pod}} {{container}} {{role}}")],
                unit="bytes", w=8,
            ),
            timeseries(
                "Usage and RSS",
                "Memory charged to the container, page cache included (`pmoas_container_memory_usage_bytes`), "
                "and its anonymous memory (`pmoas_container_memory_rss_bytes`).",
                [
                    target(f"pmoas_container_memory_usage_bytes{{{containers}}}", "{{pod}} {{container}} usage"),
                    target(f"pmoas_container_memory_rss_bytes{{{containers}}}", "{{pod}} {{container}} rss"),
                ],
                unit="bytes", w=8,
            ),
            timeseries(
                "OOM kills",
                "Processes OOM-killed per container in each interval (`pmoas_container_oom_kills_total`, "
                "attributed to the victim). Any is worth a look at the limit.",
                [target(f"sum by (namespace, pod, container, role) (increase(pmoas_container_oom_kills_total"
                        f"{{{W}}}[{RI}]))", "{{pod}} {{container}} {{role}}")],
                w=8,
            ),
            row("Block I/O and network"),
            timeseries(
                "Block I/O",
                "Bytes per second read from and written to block devices per container "
                "(`pmoas_container_fs_read_bytes_total`, `pmoas_container_fs_write_bytes_total`); write below "
                "the axis.",
                [
                    target(f"sum by (namespace, pod, container) (rate(pmoas_container_fs_read_bytes_total"
                           f"{{{containers}}}[{RI}]))", "{{pod}} {{container}} read"),
                    target(f"sum by (namespace, pod, container) (rate(pmoas_container_fs_write_bytes_total"
                           f"{{{containers}}}[{RI}]))", "{{pod}} {{container}} write"),
                ],
                unit="Bps", negative=".*write",
            ),
            timeseries(
                "Network by container",
                "IP bytes per second of each container's sockets (`pmoas_container_network_*_bytes_total`), "
                "per container inside the pod's shared namespace; transmit below the axis.",
                [
                    target(f"sum by (namespace, pod, container) (rate(pmoas_container_network_receive_bytes_total"
                           f"{{{containers}}}[{RI}]))", "{{pod}} {{container}} received"),
                    target(f"sum by (namespace, pod, container) (rate(pmoas_container_network_transmit_bytes_total"
                           f"{{{containers}}}[{RI}]))", "{{pod}} {{container}} transmitted"),
                ],
                unit="Bps", negative=".*transmitted",
            ),
            timeseries(
                "Packets by container",
                "IP packets per second of each container's sockets (`pmoas_container_network_*_packets_total`); "
                "transmit below the axis.",
                [
                    target(f"sum by (namespace, pod, container) (rate(pmoas_container_network_receive_packets_total"
                           f"{{{containers}}}[{RI}]))", "{{pod}} {{container}} received"),
                    target(f"sum by (namespace, pod, container) (rate(pmoas_container_network_transmit_packets_total"
                           f"{{{containers}}}[{RI}]))", "{{pod}} {{container}} transmitted"),
                ],
                unit="pps", negative=".*transmitted",
            ),
            row("Inventory"),
            table(
                "Containers",
                "Every live container the exporter knows (`pmoas_container_info`): its pod, role, image and "
                "sidecar kind.",
                f"pmoas_container_info{{{W}}}",
                hide=("Time", "__name__", "job", "Value"), w=12,
            ),
            table(
                "Where each resource is read from",
                "How many known cgroups each resource is read from (`pmoas_cgroup_sources`): `cgroup_v2`, "
                "`cgroup_v1`, `ebpf`, or `none` (not exported for them).",
                "sum by (resource, source) (pmoas_cgroup_sources)",
                hide=("Time",), w=6,
            ),
            timeseries(
                "cgroupfs read errors",
                "Files of live cgroups that could not be read, per second, by file "
                "(`pmoas_cgroup_read_errors_total`). Should be 0.",
                [target(f"sum by (file) (rate(pmoas_cgroup_read_errors_total[{RI}])) "
                        'or label_replace(sum(0 * pmoas_cgroup_sources), "file", "none", "", "")', "{{file}}")],
                unit="cps", w=6,
            ),
            timeseries(
                "cgroupfs reads: age and duration",
                "How old the served cgroupfs values are (`time() - pmoas_cgroup_read_timestamp_seconds`: about "
                "0 when each scrape reads, up to `--collector.cgroup.read-interval` when a thread reads in the "
                "background) and how long one read of every cgroup took (`pmoas_cgroup_read_duration_seconds`).",
                [
                    target("max by (instance) (time() - pmoas_cgroup_read_timestamp_seconds)", "{{instance}} age"),
                    target("max by (instance) (pmoas_cgroup_read_duration_seconds)", "{{instance}} one read took"),
                ],
                unit="s", w=12,
            ),
        ],
        tags=("cgroup",),
    )


# ---------------------------------------------------------------- netstack

STAGES = [
    ("ingress", "tcp_receive", "netif_receive_skb → tcp_probe: the device and IP layers up to TCP"),
    ("ingress", "socket_queue", "tcp_probe → sk_data_ready: TCP processing until the socket is woken"),
    ("ingress", "app_read", "sk_data_ready → the process copied the data: the wait for the app to read"),
    ("egress", "dev_queue", "tcp_sendmsg → net_dev_queue: TCP and IP down to the device queue"),
    ("egress", "dev_start_xmit", "net_dev_queue → net_dev_start_xmit: time in the qdisc"),
    ("egress", "dev_xmit", "net_dev_start_xmit → net_dev_xmit: the driver's transmit"),
]


def netstack():
    heatmaps = [
        heatmap(
            f"{direction.capitalize()}: {stage}",
            f"Latency of sampled packets at stage `{stage}` ({what}), "
            f"`pmoas_netstack_stage_latency_seconds{{direction=\"{direction}\", stage=\"{stage}\"}}`; "
            "packets per bucket over time, darker is more. Buckets are powers of 2 from 128 ns.",
            f'sum by (le) (rate(pmoas_netstack_stage_latency_seconds_bucket{{{POD}, direction="{direction}", '
            f'stage="{stage}"}}[{RI}]))',
            w=8, h=7,
        )
        for direction, stage, what in STAGES
    ]
    return dashboard(
        "pmoas-netstack",
        "pmoas / Netstack collector",
        "A sampled packet's path through each pod's kernel network stack: latency per stage, every drop with "
        "the kernel's reason, smoothed TCP RTT per peer, and how the followed packets' paths ended. The "
        "collector is off by default (`--collectors socket,netstack`).",
        [
            row("Stage latency"),
            timeseries(
                "Stage latency p99",
                "99th percentile over 5 minutes of each stage of the path, per pod (recording rule "
                "`namespace_pod_direction_stage:pmoas_netstack_stage_latency_seconds:p99_5m`). `pod` empty is "
                "the host's own network namespace. The heatmaps below show the whole distribution.",
                [target(f"namespace_pod_direction_stage:pmoas_netstack_stage_latency_seconds:p99_5m{{{POD}}}",
                        "{{pod}} {{direction}} {{stage}}")],
                unit="s", w=24,
            ),
            *heatmaps,
            row("Drops"),
            timeseries(
                "Drops by reason",
                "Packets freed as dropped per second, per pod and reason over 5 minutes (recording rule "
                "`namespace_pod_reason:pmoas_netstack_packet_drops:rate5m`; reasons from the kernel's "
                "`enum skb_drop_reason`). `NOT_SPECIFIED`, `QUEUE_PURGE` and `TCP_CLOSE` come with closing "
                "sockets; `NETFILTER_DROP` is a firewall rule; more than 1/s of other reasons fires "
                "PmoasNetstackDropsHigh.",
                [target(f"namespace_pod_reason:pmoas_netstack_packet_drops:rate5m{{{POD}}}",
                        "{{pod}} {{reason}}")],
                unit="pps", w=16,
            ),
            bargauge(
                "Drops in the time range",
                "Dropped packets over the dashboard's time range, by reason (`pmoas_netstack_packet_drops_total`), "
                "the largest first.",
                [target(f"sort_desc(sum by (reason) (increase(pmoas_netstack_packet_drops_total{{{POD}}}[$__range])))",
                        "{{reason}}", instant=True)],
                w=8,
            ),
            row("RTT and sampling"),
            timeseries(
                "RTT p99 by peer",
                "99th percentile over 5 minutes of the smoothed RTT of received segments, per pod, role and "
                "peer (recording rule `namespace_pod_role_peer:pmoas_tcp_rtt_seconds:p99_5m`): `app`/`sidecar` "
                "peers are loopback inside the pod, `node` and `remote` the network.",
                [target(f"namespace_pod_role_peer:pmoas_tcp_rtt_seconds:p99_5m{{{POD}}}",
                        "{{pod}} {{role}} to {{peer}}")],
                unit="s",
            ),
            heatmap(
                "RTT",
                "Smoothed RTT (`srtt`) of the received segments of the selected workloads "
                "(`pmoas_tcp_rtt_seconds`), sampled in the collector's windows; darker is more.",
                f"sum by (le) (rate(pmoas_tcp_rtt_seconds_bucket{{{W}}}[{RI}]))",
            ),
            timeseries(
                "Followed packets",
                "Packets followed through the stages per second, by how their path ended "
                "(`pmoas_netstack_followed_packets_total`): `finished` at a last stage or a known end, "
                "`left_path` left the traced hooks unseen. A large `left_path` share means stages miss "
                "packets (e.g. forwarded ones); it is not a loss of the collector's. Per node.",
                [target(f"sum by (instance, outcome) (rate(pmoas_netstack_followed_packets_total[{RI}]))",
                        "{{instance}} {{outcome}}")],
                unit="pps", stack=True,
            ),
            timeseries(
                "Netstack lost events",
                "What the netstack collector's kernel side could not record, per second and reason "
                "(`pmoas_ebpf_events_lost_total{collector=\"netstack\"}`): `packet_map_evicted` or "
                "`*_map_full` mean a map is too small (`--collector.netstack.max-tracked-packets`, "
                "`--collector.netstack.max-series`). Should be 0.",
                [target(f'sum by (instance, reason) (rate(pmoas_ebpf_events_lost_total{{collector="netstack"}}[{RI}]))',
                        "{{instance}} {{reason}}")],
                unit="cps",
            ),
        ],
        tags=("netstack",),
    )


def http():
    side = [("server", "served"), ("client", "made")]
    return dashboard(
        "pmoas-http",
        "pmoas / HTTP and gRPC",
        "Requests of the pods' containers seen at their socket system calls (the http collector, "
        "`--collectors ...,http`): rate, errors and duration per container, server and client side, for HTTP "
        "and gRPC; and the latency the sidecar adds to each request it handles.",
        [
            row("Sidecar-added latency"),
            timeseries(
                "Added by the sidecar, p50 and p99",
                "Per request the sidecar handles, its own time: its span minus the span of the request it "
                "forwarded (`pmoas_sidecar_added_latency_seconds`; recording rules "
                "`namespace_pod_direction:pmoas_sidecar_added_latency_seconds:p50_5m` and `:p99_5m`). Inbound: "
                "its downstream request vs. its request to the app; outbound: the app's request vs. its "
                "upstream request. p99 above 50 ms for 15 minutes fires PmoasSidecarAddedLatencyHigh.",
                [
                    target(f"namespace_pod_direction:pmoas_sidecar_added_latency_seconds:p50_5m{{{POD}}}",
                           "{{pod}} {{direction}} p50"),
                    target(f"namespace_pod_direction:pmoas_sidecar_added_latency_seconds:p99_5m{{{POD}}}",
                           "{{pod}} {{direction}} p99"),
                ],
                unit="s", w=16,
            ),
            heatmap(
                "Added by the sidecar",
                "The whole distribution of `pmoas_sidecar_added_latency_seconds` for the selected pods; "
                "darker is more. Buckets from 0.1 ms.",
                f"sum by (le) (rate(pmoas_sidecar_added_latency_seconds_bucket{{{POD}}}[{RI}]))",
                w=8,
            ),
            timeseries(
                "How requests were paired",
                "Samples of the added latency per second by how the request was matched with its forward "
                "(`pmoas_sidecar_pairing_total`): `request_id`, `unique`, `ordered` (the first of identical "
                "requests in flight at once on one sidecar thread), and those without a sample: "
                "`no_forward` (the sidecar answered itself, or the forward was not seen), "
                "`forward_unclaimed`. Per node.",
                [target(f"sum by (instance, outcome) (rate(pmoas_sidecar_pairing_total[{RI}]))",
                        "{{instance}} {{outcome}}")],
                unit="reqps", stack=True, w=24,
            ),
            row("HTTP"),
            *[
                timeseries(
                    f"HTTP requests {what}, by status",
                    f"HTTP requests {what} per second per container and status code "
                    f"(`pmoas_http_{s}_request_duration_seconds_count`). The sidecar's client side is its "
                    "forwards to the app (inbound) and to other services (outbound).",
                    [target(f"sum by (pod, container, status_code) (rate(pmoas_http_{s}_request_duration_seconds_count"
                            f"{{{W}}}[{RI}]))", "{{pod}} {{container}} {{status_code}}")],
                    unit="reqps",
                )
                for s, what in side
            ],
            timeseries(
                "HTTP 5xx share served",
                "Share of the requests each container served that it answered with 5xx (recording rule "
                "`namespace_pod_container:pmoas_http_server_errors:ratio5m`); above 5% for 10 minutes "
                "fires PmoasHttpServerErrorRatioHigh. The sidecar's share includes the app's errors it "
                "passed on.",
                [target(f"namespace_pod_container:pmoas_http_server_errors:ratio5m{{{W}}}",
                        "{{pod}} {{container}}")],
                unit="percentunit",
            ),
            timeseries(
                "HTTP duration served, p99",
                "99th percentile over 5 minutes of request read to response written, per pod and role "
                "(recording rule `namespace_pod_role:pmoas_http_server_request_duration_seconds:p99_5m`): "
                "the sidecar's above the app's is what the client sees beyond the app.",
                [target(f"namespace_pod_role:pmoas_http_server_request_duration_seconds:p99_5m{{{POD}}}",
                        "{{pod}} {{role}}")],
                unit="s",
            ),
            row("gRPC"),
            *[
                timeseries(
                    f"gRPC calls {what}, by code",
                    f"gRPC calls {what} per second per container, method and code "
                    f"(`pmoas_grpc_{s}_request_duration_seconds_count`).",
                    [target(f"sum by (pod, container, grpc_service, grpc_method, grpc_code) "
                            f"(rate(pmoas_grpc_{s}_request_duration_seconds_count{{{W}}}[{RI}]))",
                            "{{pod}} {{container}} {{grpc_service}}/{{grpc_method}} {{grpc_code}}")],
                    unit="reqps",
                )
                for s, what in side
            ],
            timeseries(
                "gRPC error share served",
                "Share of the calls each container served that ended with a code other than OK (recording "
                "rule `namespace_pod_container:pmoas_grpc_server_errors:ratio5m`).",
                [target(f"namespace_pod_container:pmoas_grpc_server_errors:ratio5m{{{W}}}",
                        "{{pod}} {{container}}")],
                unit="percentunit",
            ),
            timeseries(
                "gRPC duration served, p99",
                "99th percentile over 5 minutes of each served method's duration "
                "(`pmoas_grpc_server_request_duration_seconds`).",
                [target(f"histogram_quantile(0.99, sum by (pod, container, grpc_method, le) "
                        f"(rate(pmoas_grpc_server_request_duration_seconds_bucket{{{W}}}[{RI}])))",
                        "{{pod}} {{container}} {{grpc_method}}")],
                unit="s",
            ),
            row("Collector"),
            timeseries(
                "Connections followed",
                "HTTP connections the collector follows now, per node (`pmoas_http_connections_tracked`; "
                "at most `--collector.http.max-connections`).",
                [target(f"pmoas_http_connections_tracked{{{INST}}}", "{{instance}}")],
            ),
            timeseries(
                "Not decoded, by reason",
                "What the http collector could not record or decode, per second and reason "
                "(`pmoas_ebpf_events_lost_total{collector=\"http\"}`): the kernel side's ring and maps, and "
                "the parsers' reasons (docs/protocols.md). `unknown_protocol` counts bytes of connections "
                "joined mid-message, normal right after start.",
                [target(f'sum by (instance, reason) (rate(pmoas_ebpf_events_lost_total{{{INST}, collector="http"}}'
                        f'[{RI}]))', "{{instance}} {{reason}}")],
                unit="cps",
            ),
            timeseries(
                "Request traces",
                "With `--otlp.endpoint`: sampled sidecar requests sent as traces per second, by direction and "
                "where the trace id came from (`pmoas_http_traces_total`: the request's `traceparent`, `new`, "
                "`invalid_traceparent`), and traces sent without the far end of the sidecar-app hop "
                "(`pmoas_http_trace_spans_missing_total`). Per node.",
                [
                    target(f"sum by (instance, direction, context) (rate(pmoas_http_traces_total{{{INST}}}[{RI}]))",
                           "{{instance}} {{direction}} {{context}}"),
                    target(f"sum by (instance, direction) (rate(pmoas_http_trace_spans_missing_total{{{INST}}}"
                           f"[{RI}]))", "{{instance}} {{direction}} far end missing"),
                ],
                unit="cps",
            ),
        ],
        instance=True,
    )


# ---------------------------------------------------------------- sockops

def sockops():
    so = 'collector="sockops"'
    by_container = "sum by (namespace, pod, container, role)"
    return dashboard(
        "pmoas-sockops",
        "pmoas / Socket-redirect acceleration (sockops)",
        "In-pod connections (sidecar to app and back) accelerated by the sockops collector: messages handed "
        "socket to socket instead of through TCP/IP and `lo`, what still went through TCP and why, its maps and "
        "programs; and the pod's `lo` traffic, the sidecar-added latency and CPU beside the redirected bytes, "
        "to see what changed when acceleration was switched on (the green region: its programs attached). "
        "The collector is off by default (`--collectors ...,sockops`).",
        [
            row("Acceleration"),
            stat(
                "Accelerated share",
                "Share of the bytes the pod's sockets in the redirect map sent that went by redirect, per pod, "
                "over 5 minutes (recording rule `namespace_pod:pmoas_sockops_accelerated_bytes:ratio5m`: "
                "redirected / (redirected + miss bytes)). Connections that never entered the map (off the "
                "pod, excluded, refused) are in neither. Below 50% for 30 minutes with sockets in the map "
                "fires PmoasSockopsAccelerationIneffective. Empty for a pod that sent nothing in 5 minutes.",
                [target(f"namespace_pod:pmoas_sockops_accelerated_bytes:ratio5m{{{POD}}}", "{{namespace}}/{{pod}}")],
                unit="percentunit", w=12, h=5, steps=[("red", None), ("orange", 0.5), ("green", 0.9)], graph=True,
            ),
            stat(
                "Sockets in the redirect map",
                "Sockets of the selected containers in the redirect map now (`pmoas_sockops_active_sockets`): "
                "both ends of every accelerated in-pod connection, so twice the connections.",
                [target(f"sum(pmoas_sockops_active_sockets{{{W}}})", "sockets")],
                w=4, h=5, graph=True,
            ),
            stat(
                "Collector answering",
                "`pmoas_scrape_collector_success{collector=\"sockops\"}`, the lowest over the selected "
                "instances: 1 the collector answered its last scrape, 0 it failed or did not start (alert "
                "PmoasCollectorFailing; the landing page says why). Empty: the collector is not enabled.",
                [target(f"min(pmoas_scrape_collector_success{{{INST}, {so}}})", "sockops")],
                w=4, h=5, steps=RED_BELOW_1, mappings=UP_MAPPINGS,
            ),
            stat(
                "Programs not attached",
                "sockops programs not attached, over the selected instances (0 is healthy): without "
                "`sockops_established` or `sockops_syn_egress` no socket enters the map, without "
                "`sockops_redirect` nothing is redirected. Traffic then goes through TCP, nothing breaks "
                "(alert PmoasSockopsProgramDetached; the table at the bottom names them).",
                [target(f"count(pmoas_ebpf_program_attached{{{INST}, {so}}} == 0) "
                        f"or sum(0 * pmoas_ebpf_program_attached{{{INST}, {so}}})", "not attached")],
                w=4, h=5, steps=[("green", None), ("red", 1)],
            ),
            row("Before and after acceleration"),
            timeseries(
                "Sidecar hop: lo vs redirect, bytes",
                "Bytes per second the pod sent over `lo` (`pmoas_pod_network_transmit_bytes_total{interface=\"lo\"}`, "
                "headers and ACKs included) and by redirect (`pmoas_sockops_redirected_bytes_total`, payload), "
                "per pod. Without acceleration the sidecar hop is all on `lo`; with it, the redirected line "
                "takes over and `lo` falls to what is not accelerated (misses, excluded ports, connections "
                "older than the programs, other loopback traffic). Set the time range across the switch.",
                [
                    target(f'sum by (namespace, pod) (rate(pmoas_pod_network_transmit_bytes_total{{{POD}, '
                           f'interface="lo"}}[{RI}]))', "{{namespace}}/{{pod}} lo"),
                    target(f"sum by (namespace, pod) (rate(pmoas_sockops_redirected_bytes_total{{{POD}}}[{RI}]))",
                           "{{namespace}}/{{pod}} redirected"),
                ],
                unit="Bps",
            ),
            timeseries(
                "Sidecar hop: lo packets vs redirected messages",
                "Packets per second the pod sent over `lo` (`pmoas_pod_network_transmit_packets_total{interface="
                "\"lo\"}`) and messages per second sent by redirect (`pmoas_sockops_redirected_messages_total`), "
                "per pod: each redirected message saves its data packets and their ACKs on `lo`.",
                [
                    target(f'sum by (namespace, pod) (rate(pmoas_pod_network_transmit_packets_total{{{POD}, '
                           f'interface="lo"}}[{RI}]))', "{{namespace}}/{{pod}} lo packets"),
                    target(f"sum by (namespace, pod) (rate(pmoas_sockops_redirected_messages_total{{{POD}}}[{RI}]))",
                           "{{namespace}}/{{pod}} redirected messages"),
                ],
                unit="short",
            ),
            timeseries(
                "Added by the sidecar, p50 and p99",
                "The latency the sidecar adds to each request it handles, per pod and direction (recording rules "
                "`namespace_pod_direction:pmoas_sidecar_added_latency_seconds:p50_5m` and `:p99_5m`; needs the "
                "http collector, `--collectors ...,http`), on the same time axis as the redirected bytes. "
                "The time the sidecar's own send and receive calls spend in TCP/IP is part of it (on `lo` the "
                "kernel delivers inside the send), and a redirect shortens it: compare before and after the "
                "switch at a similar load.",
                [
                    target(f"namespace_pod_direction:pmoas_sidecar_added_latency_seconds:p50_5m{{{POD}}}",
                           "{{pod}} {{direction}} p50"),
                    target(f"namespace_pod_direction:pmoas_sidecar_added_latency_seconds:p99_5m{{{POD}}}",
                           "{{pod}} {{direction}} p99"),
                ],
                unit="s",
            ),
            timeseries(
                "CPU: sidecar vs app",
                "CPU per pod and role in cores, over 5 minutes (recording rule "
                "`namespace_pod_container:pmoas_container_cpu_usage_seconds:rate5m`). A redirect skips the "
                "TCP/IP work on both ends, which the sending and receiving processes pay for: at a similar "
                "load, both roles' CPU usually falls once acceleration is on.",
                [target(
                    f"sum by (namespace, pod, role) (namespace_pod_container:pmoas_container_cpu_usage_seconds:rate5m"
                    f"{{{W}}})",
                    "{{namespace}}/{{pod}} {{role}}",
                )],
            ),
            row("Redirected"),
            timeseries(
                "Redirected bytes by container",
                "Bytes per second each container's sockets received (`pmoas_sockops_redirected_received_bytes_total`) "
                "and sent (`pmoas_sockops_redirected_bytes_total`, below the axis) socket to socket, bypassing "
                "TCP/IP. No packet carries them: the cgroup collector's "
                "`pmoas_container_network_receive_bytes_total` does not see them, add these for all a "
                "container received.",
                [
                    target(f"{by_container} (rate(pmoas_sockops_redirected_received_bytes_total{{{W}}}[{RI}]))",
                           "{{pod}} {{container}} {{role}} received"),
                    target(f"{by_container} (rate(pmoas_sockops_redirected_bytes_total{{{W}}}[{RI}]))",
                           "{{pod}} {{container}} {{role}} sent"),
                ],
                unit="Bps", negative=".*sent",
            ),
            timeseries(
                "Redirected messages by container",
                "Messages per second each container's sockets handed socket to socket "
                "(`pmoas_sockops_redirected_messages_total`): one per send call that was redirected. Bytes "
                "over messages is the average message size.",
                [target(f"{by_container} (rate(pmoas_sockops_redirected_messages_total{{{W}}}[{RI}]))",
                        "{{pod}} {{container}} {{role}}")],
                unit="cps",
            ),
            row("Through TCP instead"),
            timeseries(
                "Accelerated share per pod",
                "The accelerated share over time (recording rule "
                "`namespace_pod:pmoas_sockops_accelerated_bytes:ratio5m`): a fall means misses below grew.",
                [target(f"namespace_pod:pmoas_sockops_accelerated_bytes:ratio5m{{{POD}}}", "{{namespace}}/{{pod}}")],
                unit="percentunit", w=8,
            ),
            timeseries(
                "Misses by container",
                "Messages per second of sockets in the redirect map that went through the TCP stack instead "
                "(`pmoas_sockops_redirect_misses_total`): the peer socket not in the map (refused, maps full, "
                "an end older than the programs), a socket that once sent through TCP and stays there so "
                "that no message overtakes another, or the queue cap.",
                [target(f"{by_container} (rate(pmoas_sockops_redirect_misses_total{{{W}}}[{RI}]))",
                        "{{pod}} {{container}} {{role}}")],
                unit="cps", w=8,
            ),
            timeseries(
                "Miss bytes by container",
                "Bytes per second of those misses (`pmoas_sockops_redirect_miss_bytes_total`): what the "
                "accelerated share leaves to TCP.",
                [target(f"{by_container} (rate(pmoas_sockops_redirect_miss_bytes_total{{{W}}}[{RI}]))",
                        "{{pod}} {{container}} {{role}}")],
                unit="Bps", w=8,
            ),
            timeseries(
                "Queue overflows",
                "Switches to TCP per second because the receiver left more than the cap (4 MiB) unread "
                "(`pmoas_sockops_queue_overflows_total`). Redirected data bypasses TCP flow control, so past "
                "the cap the sender goes through TCP until the receiver has read everything: a slow reader, "
                "not a fault.",
                [target(f"{by_container} (rate(pmoas_sockops_queue_overflows_total{{{W}}}[{RI}]))",
                        "{{pod}} {{container}} {{role}}")],
                unit="cps", w=8,
            ),
            timeseries(
                "Insert errors",
                "Sockets per second the kernel refused to put in the redirect map "
                "(`pmoas_sockops_insert_errors_total`): EBUSY on every socket means another generation of "
                "sockops programs is attached (a second pmoas, or an old one's pinned programs); a socket with "
                "a ULP such as kTLS cannot be redirected. Refused sockets go through TCP (alert "
                "PmoasSockopsInsertErrors).",
                [target(f"{by_container} (rate(pmoas_sockops_insert_errors_total{{{W}}}[{RI}]))",
                        "{{pod}} {{container}} {{role}}")],
                unit="cps", w=8,
            ),
            timeseries(
                "Sockets in the redirect map by container",
                "Sockets of each container in the redirect map (`pmoas_sockops_active_sockets`), counted for "
                "the container that owns the socket.",
                [target(f"{by_container} (pmoas_sockops_active_sockets{{{W}}})", "{{pod}} {{container}} {{role}}")],
                w=8,
            ),
            row("Collector"),
            table(
                "Programs",
                "Every sockops program with its hook, per instance: 1 attached, 0 not "
                "(`pmoas_ebpf_program_attached{collector=\"sockops\"}`): `sockops_established` (sock_ops: "
                "puts sockets in the map), `sockops_syn_egress` (cgroup_skb: marks connections whose SYN left "
                "through `lo`), `sockops_redirect` (sk_msg: the redirect), `sockops_recv_length` (what "
                "receivers read, for the queue cap).",
                f"pmoas_ebpf_program_attached{{{INST}, {so}}}",
                hide=("Time", "__name__", "job", "collector"), w=12, h=7, steps=RED_BELOW_1, color_value=True,
                mappings=[{"type": "value", "options": {"0": {"text": "detached", "color": "red", "index": 0},
                                                        "1": {"text": "attached", "color": "green", "index": 1}}}],
            ),
            timeseries(
                "Lost events by reason",
                "What the sockops kernel side could not do or record, per second and reason "
                "(`pmoas_ebpf_events_lost_total{collector=\"sockops\"}`): `sockhash_full` (the redirect map "
                "is full) and `pair_map_full` (the connection map is full) leave new sockets to TCP (alert "
                "PmoasSockopsMapFull); `socket_storage` (no memory for a socket's state) too; "
                "`aggregation_map_full` loses a container's counts; `recursion` runs skipped. Should be 0.",
                [target(f"sum by (instance, reason) (rate(pmoas_ebpf_events_lost_total{{{INST}, {so}}}[{RI}]))",
                        "{{instance}} {{reason}}")],
                unit="cps", h=7,
            ),
        ],
        instance=True,
        tags=("sockops",),
        annotations=[
            annotation(
                "sockops attached",
                f'min by (instance) (pmoas_ebpf_program_attached{{{INST}, {so}}})',
                "sockops programs attached",
                "{{instance}}: in-pod connections made from here on are accelerated",
                "green",
            )
        ],
    )


DASHBOARDS = {
    "pmoas-node.json": node,
    "pmoas-pod-sidecar.json": pod_sidecar,
    "pmoas-socket.json": socket,
    "pmoas-cgroup.json": cgroup,
    "pmoas-netstack.json": netstack,
    "pmoas-http.json": http,
    "pmoas-sockops.json": sockops,
}


def render(build):
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


def main(argv):
    out = pathlib.Path(__file__).resolve().parent / "dashboards"
    check = "--check" in argv[1:]
    stale = []
    for name, build in DASHBOARDS.items():
        path = out / name
        text = render(build)
        if check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(str(path))
        else:
            out.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    known = set(DASHBOARDS)
    extra = [str(p) for p in sorted(out.glob("*.json")) if p.name not in known] if out.exists() else []
    if check and (stale or extra):
        for p in stale:
            print(f"{p}: differs from grafana/generate.py's output; run python3 grafana/generate.py", file=sys.stderr)
        for p in extra:
            print(f"{p}: not made by grafana/generate.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
