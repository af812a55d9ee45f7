"""deploy/k8s manifests: valid against the Kubernetes schema (kubernetes-validate bundles it, so
this runs offline) and consistent with the server (probe paths, port, settings, selectors)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from unetkit.config import ServeConfig
from unetkit.serve.server import env_values

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
KUBERNETES_VERSION = "1.30.0"

yaml = pytest.importorskip("yaml")
kubernetes_validate = pytest.importorskip("kubernetes_validate")


def documents() -> dict[str, dict]:
    docs = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            docs[doc["kind"]] = doc
    return docs


def test_every_manifest_validates_against_the_schema():
    docs = documents()
    assert set(docs) == {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"}
    for doc in docs.values():
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    broken = dict(docs["Service"], spec={**docs["Service"]["spec"], "ports": [{"port": "eighty"}]})
    with pytest.raises(kubernetes_validate.ValidationError):  # the validator does reject bad manifests
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def test_manifests_agree_with_the_server_and_each_other():
    docs = documents()
    deployment, service, hpa, pdb = (docs[k] for k in ("Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"))
    pod = deployment["spec"]["template"]
    labels = pod["metadata"]["labels"]
    for selector in (deployment["spec"]["selector"]["matchLabels"], service["spec"]["selector"], pdb["spec"]["selector"]["matchLabels"]):
        assert selector.items() <= labels.items()
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    container = pod["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    settings = env_values({k: v for k, v in env.items() if k.startswith("UNETKIT_SERVE_")})  # raises on a typo
    assert int(env["UNETKIT_SERVE_PORT"]) == container["ports"][0]["containerPort"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["resources"]["limits"]["cpu"] and container["resources"]["limits"]["memory"]
    drain = settings.get("drain_seconds", ServeConfig().drain_seconds)
    assert pod["spec"]["terminationGracePeriodSeconds"] > drain + 5  # preStop sleep + drain fit in the grace period
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^EXPOSE (\d+)", dockerfile, re.M).group(1) == env["UNETKIT_SERVE_PORT"]
    assert 'ENTRYPOINT ["unetkit", "serve"]' in dockerfile
