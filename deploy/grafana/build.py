"""Writes the three Grafana dashboards of unetkit serve to deploy/grafana/dashboards/*.json.

    python deploy/grafana/build.py          # after editing a query or a panel here

The JSON files are what Grafana provisions (deploy/grafana/provisioning/); this script is their
source, kept so that every panel has the same datasource, layout and conventions, and the
queries read as PromQL rather than as escaped JSON strings. tests/deploy checks that the files
are up to date, that each query names only metrics the server exports (or the recording rules
of deploy/prometheus/rules), and, against a real Prometheus, that each one parses and runs.

- executive: is the service meeting its objectives, on which model, is the input drifting;
- on-call: burn rates, errors, saturation, readiness: what is wrong right now and where;
- debug: per-route latency heatmaps, batching, model outputs, drift per feature, shadow IoU.

SLOs (deploy/prometheus/rules/slo.yml): 99.9% of POST /v1/segment without a 5xx and 99% within
2 s, over 30 days.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "dashboards"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
SEGMENT = 'job="$job", route="/v1/segment"'
AVAILABILITY_BUDGET = 0.001  # 1 - 99.9%
LATENCY_BUDGET = 0.01  # 1 - 99%
LATENCY_BUCKET = "2.0"  # seconds: the le= bucket the latency SLO counts as fast enough
WINDOWS = ("5m", "30m", "1h", "6h")


# ---------------------------------------------------------------- panels


def target(expr: str, legend: str = "", ref: str = "A", **extra: Any) -> dict[str, Any]:
    return {"refId": ref, "datasource": DATASOURCE, "expr": expr, "legendFormat": legend or "__auto", **extra}


def targets(*pairs: tuple[str, str]) -> list[dict[str, Any]]:
    return [target(expr, legend, chr(ord("A") + i)) for i, (expr, legend) in enumerate(pairs)]


def panel(kind: str, title: str, description: str, queries: list[dict[str, Any]], width: int = 8,
          height: int = 8, unit: str = "short", thresholds: list[tuple[float | None, str]] | None = None,
          minimum: float | None = None, maximum: float | None = None, decimals: int | None = None,
          options: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    steps = [{"value": v, "color": c} for v, c in (thresholds or [(None, "green")])]
    defaults: dict[str, Any] = {"unit": unit, "thresholds": {"mode": "absolute", "steps": steps}}
    if minimum is not None:
        defaults["min"] = minimum
    if maximum is not None:
        defaults["max"] = maximum
    if decimals is not None:
        defaults["decimals"] = decimals
    if kind == "timeseries" and thresholds:
        defaults["custom"] = {"thresholdsStyle": {"mode": "line"}}
    if kind == "stat":
        defaults["color"] = {"mode": "thresholds"}
    return {"type": kind, "title": title, "description": description, "datasource": DATASOURCE,
            "targets": queries, "fieldConfig": {"defaults": defaults, "overrides": []},
            "options": options or {}, "gridPos": {"w": width, "h": height}, **extra}


def stat(title: str, description: str, expr: str, legend: str = "", **kw: Any) -> dict[str, Any]:
    options = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
               "colorMode": "background", "graphMode": "none", "textMode": kw.pop("text_mode", "auto")}
    return panel("stat", title, description, [target(expr, legend, instant=True, range=False)],
                 options=options, **{"width": 6, "height": 5, **kw})


def heatmap(title: str, description: str, bucket_expr: str, unit: str, **kw: Any) -> dict[str, Any]:
    """Buckets of a Prometheus histogram over time (rates per `le`, Grafana's 'heatmap' format)."""
    query = target(bucket_expr, "{{le}}", format="heatmap")
    options = {"calculate": False, "yAxis": {"unit": unit}, "cellGap": 1, "tooltip": {"mode": "single", "yHistogram": True},
               "color": {"mode": "scheme", "scheme": "Oranges", "exponent": 0.5, "steps": 64}}
    return panel("heatmap", title, description, [query], unit=unit, options=options, **kw)


def row(title: str) -> dict[str, Any]:
    return {"type": "row", "title": title, "collapsed": False, "panels": [], "gridPos": {"w": 24, "h": 1}}


def mean(metric: str, by: str, selector: str, window: str = "$__rate_interval") -> str:
    """Mean of a Prometheus histogram's observations: rate of the sum over rate of the count."""
    return (f"sum by ({by}) (rate({metric}_sum{{{selector}}}[{window}]))\n"
            f"/ sum by ({by}) (rate({metric}_count{{{selector}}}[{window}]))")


def quantile(q: float, metric: str, selector: str, by: str = "le") -> str:
    return f"histogram_quantile({q}, sum by ({by}) (rate({metric}_bucket{{{selector}}}[$__rate_interval])))"


# ---------------------------------------------------------------- the SLO queries

ERRORS_30D = (f'(sum(increase(unetkit_http_requests_total{{{SEGMENT}, status=~"5.."}}[30d])) or vector(0))\n'
              f"/ sum(increase(unetkit_http_requests_total{{{SEGMENT}}}[30d]))")
FAST_30D = (f'sum(increase(unetkit_http_request_duration_seconds_bucket{{{SEGMENT}, le="{LATENCY_BUCKET}"}}[30d]))\n'
            f"/ sum(increase(unetkit_http_request_duration_seconds_count{{{SEGMENT}}}[30d]))")


def burn_rates(record: str, budget: float) -> list[dict[str, Any]]:
    return targets(*((f'unetkit:{record}:ratio_rate{w}{{job="$job"}} / {budget}', w) for w in WINDOWS))


# ---------------------------------------------------------------- dashboards


def executive() -> list[dict[str, Any]]:
    budget_colors = [(None, "red"), (0.25, "orange"), (0.5, "green")]
    return [
        row("Objectives (rolling 30 days)"),
        stat("Availability", "Share of POST /v1/segment requests answered without a 5xx over the last 30 days. "
             "Objective: 99.9%.", f"1 - ({ERRORS_30D})", unit="percentunit", decimals=3,
             thresholds=[(None, "red"), (0.999, "green")]),
        stat("Availability error budget left", "Share of the 30-day 5xx budget (0.1% of requests) not yet spent. "
             "Below 0 the objective is missed.", f"1 - ({ERRORS_30D}) / {AVAILABILITY_BUDGET}",
             unit="percentunit", thresholds=budget_colors),
        stat("Within 2 s", "Share of POST /v1/segment requests answered within 2 s over the last 30 days. "
             "Objective: 99%.", FAST_30D, unit="percentunit", decimals=2, thresholds=[(None, "red"), (0.99, "green")]),
        stat("Latency error budget left", "Share of the 30-day budget of slow answers (1% of requests over 2 s) "
             "not yet spent.", f"1 - (1 - {FAST_30D}) / {LATENCY_BUDGET}", unit="percentunit",
             thresholds=budget_colors),
        row("Now"),
        panel("timeseries", "Traffic", "POST /v1/segment requests per second, by status.",
              [target(f'sum by (status) (rate(unetkit_http_requests_total{{{SEGMENT}}}[$__rate_interval]))',
                      "{{status}}")], width=12, unit="reqps"),
        panel("timeseries", "Latency of POST /v1/segment", "p50, p95 and p99 of the request latency "
              "(interpolated within histogram buckets). The latency objective is 99% within 2 s.",
              targets((quantile(0.5, "unetkit_http_request_duration_seconds", SEGMENT), "p50"),
                      (quantile(0.95, "unetkit_http_request_duration_seconds", SEGMENT), "p95"),
                      (quantile(0.99, "unetkit_http_request_duration_seconds", SEGMENT), "p99")),
              width=12, unit="s", thresholds=[(None, "green"), (2, "red")]),
        stat("Model in production", "The primary model's name and version (first 12 hex digits of the weights' "
             "sha256) on the ready replicas.", 'max by (name, model_version) (unetkit_model_info{job="$job", role="primary"})',
             "{{name}} {{model_version}}", text_mode="name", width=8),
        stat("Ready replicas", "Replicas that have loaded and warmed the model and are not draining.",
             'sum(unetkit_ready{job="$job"})', thresholds=[(None, "red"), (1, "orange"), (2, "green")], width=4),
        stat("Input drift", "Largest drift score over the replicas divided by its threshold, per model version: "
             "above 1 the recent inputs differ from the training data (empty until a replica's window holds "
             "enough images).",
             'max by (model_version) (unetkit_drift_score{job="$job"} / unetkit_drift_threshold{job="$job"})',
             "{{model_version}}", unit="none", decimals=2, thresholds=[(None, "green"), (0.75, "orange"), (1, "red")],
             width=6),
        stat("Alerts firing", "unetkit alerts firing now (deploy/prometheus/rules; runbook in docs/runbook.md).",
             'count(ALERTS{alertname=~"Unetkit.*", alertstate="firing"}) or vector(0)',
             thresholds=[(None, "green"), (1, "red")], width=6),
    ]


def oncall() -> list[dict[str, Any]]:
    burn_colors = [(None, "green"), (6, "orange"), (14.4, "red")]
    by_instance = 'job="$job", instance=~"$instance"'
    return [
        row("Error budget burn (1 = spending exactly the 30-day budget)"),
        panel("timeseries", "Availability burn rate", "5xx share of POST /v1/segment divided by the 0.1% budget, "
              "over 5m/30m/1h/6h. Pages when 1h and 5m exceed 14.4; tickets when 6h and 30m exceed 6.",
              burn_rates("segment_errors", AVAILABILITY_BUDGET), width=12, thresholds=burn_colors, minimum=0),
        panel("timeseries", "Latency burn rate", "Share of POST /v1/segment slower than 2 s divided by the 1% "
              "budget, over 5m/30m/1h/6h. Same paging thresholds.",
              burn_rates("segment_slow", LATENCY_BUDGET), width=12, thresholds=burn_colors, minimum=0),
        panel("table", "Alerts firing", "unetkit alerts firing now; each has a runbook_url annotation (docs/runbook.md).",
              [target('ALERTS{alertname=~"Unetkit.*", alertstate="firing"}', instant=True, range=False,
                      format="table")], width=24, height=6),
        row("Errors"),
        panel("timeseries", "Requests by status", "POST /v1/segment answers per second by status.",
              [target(f'sum by (status) (rate(unetkit_http_requests_total{{{SEGMENT}, instance=~"$instance"}}'
                      "[$__rate_interval]))", "{{status}}")], unit="reqps"),
        panel("timeseries", "Errors by route and status", "Non-2xx answers per second on every route "
              "(4xx: the client's fault; 5xx: ours; 503: overloaded or not ready).",
              [target(f'sum by (route, status) (rate(unetkit_http_requests_total{{{by_instance}, status!~"2.."}}'
                      "[$__rate_interval]))", "{{route}} {{status}}")], unit="reqps"),
        panel("timeseries", "Rejections by reason", "Requests refused before inference per second: overloaded "
              "(max_inflight, max_queue, queue_timeout_seconds) or unauthorized.",
              [target(f"sum by (reason) (rate(unetkit_rejected_requests_total{{{by_instance}}}[$__rate_interval]))",
                      "{{reason}}")], unit="reqps"),
        row("Saturation"),
        panel("timeseries", "In-flight requests", "Requests being handled per replica (max_inflight refuses more).",
              [target(f"unetkit_http_inflight_requests{{{by_instance}}}", "{{instance}}")], minimum=0),
        panel("timeseries", "Queue depth (tiles)", "Tiles waiting for a forward pass, per replica and model role. "
              "Rises before latency does; never empty = not keeping up.",
              [target(f"unetkit_queue_depth{{{by_instance}}}", "{{instance}} {{role}}")], minimum=0),
        panel("timeseries", "Tiles per forward pass", "Mean batch size per role: near max_batch_size = saturated; "
              "near 1 under load = batching is not packing requests.",
              [target(mean("unetkit_batch_size", "role", by_instance), "{{role}}")], minimum=0),
        panel("timeseries", "p99 latency per replica", "POST /v1/segment p99 per replica: one slow replica "
              "points at its node.", [target(quantile(0.99, "unetkit_http_request_duration_seconds",
                                                      f'{SEGMENT}, instance=~"$instance"', "le, instance"), "{{instance}}")],
              unit="s", thresholds=[(None, "green"), (2, "red")]),
        panel("timeseries", "Forward pass p95", "95th percentile of the predictor's time per forward pass, by role.",
              [target(quantile(0.95, "unetkit_inference_seconds", by_instance, "le, role"), "{{role}}")], unit="s"),
        panel("stat", "Up and ready", "Per replica: scraped (up) and model loaded and warm (ready).",
              targets((f"up{{{by_instance}}}", "up {{instance}}"), (f"unetkit_ready{{{by_instance}}}", "ready {{instance}}")),
              thresholds=[(None, "red"), (1, "green")],
              options={"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                       "colorMode": "background", "graphMode": "none", "textMode": "value_and_name"}),
    ]


def debug() -> list[dict[str, Any]]:
    sel = 'job="$job", instance=~"$instance"'
    return [
        row("Latency"),
        heatmap("Latency of $route", "Request latency distribution of one route (repeated per route).",
                f'sum by (le) (rate(unetkit_http_request_duration_seconds_bucket{{{sel}, route="$route"}}[$__rate_interval]))',
                "s", width=12, repeat="route", repeatDirection="h", maxPerRow=2),
        row("Inference and batching"),
        heatmap("Predictor seconds per forward pass", "Time of each forward pass (all roles).",
                f"sum by (le) (rate(unetkit_inference_seconds_bucket{{{sel}}}[$__rate_interval]))", "s"),
        heatmap("Tiles per forward pass", "Batch sizes the batcher formed (up to max_batch_size).",
                f"sum by (le) (rate(unetkit_batch_size_bucket{{{sel}}}[$__rate_interval]))", "short"),
        heatmap("Requests per forward pass", "Distinct requests whose tiles shared a forward pass.",
                f"sum by (le) (rate(unetkit_batch_requests_bucket{{{sel}}}[$__rate_interval]))", "short"),
        panel("timeseries", "Forward passes per second", "By role and model version.",
              [target(f"sum by (role, model_version) (rate(unetkit_inference_seconds_count{{{sel}}}[$__rate_interval]))",
                      "{{role}} {{model_version}}")], width=12, unit="ops"),
        panel("timeseries", "Segmentations by model", "Requests answered per second by role and version "
              "(canary split).", [target(f"sum by (role, model_version) (rate(unetkit_model_requests_total{{{sel}}}"
                                         "[$__rate_interval]))", "{{role}} {{model_version}}")], width=12, unit="reqps"),
        stat("Inference backend", "The backend each loaded model runs on (torch, onnx, openvino, openvino-bf16...): "
             "'auto' chose it by measurement on the replica's CPU, reduced precision only behind the parity gate.",
             f"max by (role, model_version, backend) (unetkit_model_backend{{{sel}}})",
             "{{role}} {{model_version}}: {{backend}}", text_mode="name", width=24, height=4),
        row("Model outputs"),
        panel("timeseries", "Predicted class fraction", "Mean per-request share of pixels of each class: a shift "
              "with unchanged traffic is the first sign of drift or a bad model.",
              [target(mean("unetkit_predicted_class_fraction", "model_version, class_name", sel),
                      "{{class_name}} {{model_version}}")], unit="percentunit", minimum=0, maximum=1),
        panel("timeseries", "Mean confidence", "Mean winning-class probability per request, by model version.",
              [target(mean("unetkit_prediction_confidence", "model_version", sel), "{{model_version}}")],
              unit="percentunit", maximum=1),
        panel("timeseries", "Low-confidence pixels", "Mean per-request share of pixels whose winning probability "
              "is below 0.5.", [target(mean("unetkit_low_confidence_fraction", "model_version", sel), "{{model_version}}")],
              unit="percentunit", minimum=0),
        heatmap("Confidence per request", "Distribution of the per-request mean winning probability.",
                f"sum by (le) (rate(unetkit_prediction_confidence_bucket{{{sel}}}[$__rate_interval]))", "percentunit",
                width=12),
        heatmap("Low-confidence share per request", "Distribution of the per-request share of pixels below 0.5.",
                f"sum by (le) (rate(unetkit_low_confidence_fraction_bucket{{{sel}}}[$__rate_interval]))", "percentunit",
                width=12),
        row("Drift (rolling window vs the training baseline)"),
        panel("timeseries", "Drift score and threshold", "Max PSI over the features of each replica's window, "
              "and its threshold.", targets((f"unetkit_drift_score{{{sel}}}", "score {{instance}} {{model_version}}"),
                                            (f"max by (model_version) (unetkit_drift_threshold{{{sel}}})",
                                             "threshold {{model_version}}")), minimum=0),
        panel("timeseries", "PSI per feature", "Which inputs or outputs moved (brightness, contrast, sharpness, "
              "sizes, intensity histograms, class fractions, confidence…).",
              [target(f"max by (feature) (unetkit_drift_feature_psi{{{sel}}})", "{{feature}}")], minimum=0),
        panel("timeseries", "Images in the drift window", "Per replica; the score is absent until the window holds "
              "drift_min_images, and the alert waits for 100.",
              [target(f"unetkit_drift_window_images{{{sel}}}", "{{instance}} {{model_version}}")], minimum=0),
        row("Shadow rollout"),
        panel("timeseries", "Shadow agreement (IoU)", "Mean IoU between the candidate's and the primary's label maps "
              "on shadowed requests, and the last one.",
              targets((mean("unetkit_shadow_agreement_iou", "job", sel), "mean"),
                      (f"unetkit_shadow_agreement_iou_last{{{sel}}}", "last {{instance}}")),
              unit="percentunit", minimum=0, maximum=1, thresholds=[(None, "red"), (0.8, "green")]),
        heatmap("Shadow IoU per request", "Distribution of the candidate-vs-primary IoU.",
                f"sum by (le) (rate(unetkit_shadow_agreement_iou_bucket{{{sel}}}[$__rate_interval]))", "percentunit"),
        panel("timeseries", "Shadow comparisons dropped, samples saved", "Shadow work skipped because the candidate "
              "was busy, and requests saved to the sample folder, per second.",
              targets((f"sum(rate(unetkit_shadow_dropped_total{{{sel}}}[$__rate_interval]))", "shadow dropped"),
                      (f"sum(rate(unetkit_samples_saved_total{{{sel}}}[$__rate_interval]))", "samples saved")),
              unit="ops"),
    ]


# ---------------------------------------------------------------- assembly


def variables(instance: bool, route: bool) -> list[dict[str, Any]]:
    def query(name: str, label: str, definition: str, multi: bool) -> dict[str, Any]:
        return {"name": name, "label": label, "type": "query", "datasource": DATASOURCE, "definition": definition,
                "query": {"query": definition, "refId": f"{name}-variable"}, "refresh": 2, "sort": 1,
                "multi": multi, "includeAll": multi, **({"allValue": ".*"} if multi else {}),
                "current": {"selected": True, "text": "All", "value": "$__all"} if multi else {}}

    found = [
        {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus", "refresh": 1,
         "current": {}, "hide": 0},
        query("job", "Job", "label_values(unetkit_ready, job)", multi=False),
    ]
    if instance:
        found.append(query("instance", "Replica", 'label_values(unetkit_ready{job="$job"}, instance)', multi=True))
    if route:
        found.append(query("route", "Route", 'label_values(unetkit_http_requests_total{job="$job"}, route)', multi=True))
    return found


def layout(panels: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Left to right, wrapping at 24 columns; rows start a new line. Ids in order."""
    x = y = line = 0
    for i, p in enumerate(panels, start=1):
        w, h = p["gridPos"]["w"], p["gridPos"]["h"]
        if x + w > 24 or p["type"] == "row":
            x, y = 0, y + line
            line = 0
        p["gridPos"] = {"x": x, "y": y, "w": w, "h": h}
        p["id"] = i
        x, line = x + w, max(line, h)
        if p["type"] == "row":
            x, y, line = 0, y + h, 0
    return panels


def dashboard(uid: str, title: str, description: str, panels: list[dict[str, Any]], time_from: str,
              instance: bool = True, route: bool = False) -> dict[str, Any]:
    return {
        "uid": uid, "title": title, "description": description, "tags": ["unetkit"], "editable": True,
        "schemaVersion": 39, "version": 1, "refresh": "30s", "timezone": "browser", "graphTooltip": 1,
        "time": {"from": time_from, "to": "now"},
        "templating": {"list": variables(instance, route)},
        "annotations": {"list": [{"builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                                  "enable": True, "hide": True, "iconColor": "rgba(0, 211, 255, 1)",
                                  "name": "Annotations & Alerts", "type": "dashboard"}]},
        "links": [{"title": "unetkit dashboards", "type": "dashboards", "tags": ["unetkit"], "asDropdown": True}],
        "panels": layout(panels),
    }


DASHBOARDS = {
    "unetkit-executive": lambda: dashboard(
        "unetkit-executive", "unetkit / executive", "Objectives, traffic, latency, model in production, drift.",
        executive(), "now-7d", instance=False),
    "unetkit-oncall": lambda: dashboard(
        "unetkit-oncall", "unetkit / on-call", "Burn rates, errors, saturation and readiness.", oncall(), "now-6h"),
    "unetkit-debug": lambda: dashboard(
        "unetkit-debug", "unetkit / debug", "Per-route latency, batching, model outputs, drift per feature, shadow.",
        debug(), "now-3h", route=True),
}


def render(name: str) -> str:
    return json.dumps(DASHBOARDS[name](), indent=2, ensure_ascii=False) + "\n"


def main() -> None:
    OUT.mkdir(exist_ok=True)
    for name in DASHBOARDS:
        (OUT / f"{name}.json").write_text(render(name), encoding="utf-8")
        print(OUT / f"{name}.json")


if __name__ == "__main__":
    main()
