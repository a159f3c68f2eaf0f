"""The kustomize base: one object per file, each opened by comments that say why.

Names are explicit (`<app>-worker`, not a kustomize namePrefix): kustomize does not know
KEDA's resources, so a prefix would not reach a ScaledObject's target or a
TriggerAuthentication's Secret.
"""

from __future__ import annotations

from typing import Any

import yaml

from bgtasks_gen.k8s.facts import WEB_PORT, K8sFacts
from bgtasks_gen.k8s.triggers import trigger_auth_parameters, worker_triggers

MIN_WORKERS = 1  # never zero: a scheduled task or a retry needs a worker to run it
MAX_WORKERS = 10
WEB_REPLICAS = 2
KEDA_API = "keda.sh/v1alpha1"


def render_manifests(facts: K8sFacts) -> dict[str, str]:
    """file name (inside the kustomize folder) -> YAML text."""
    objects: dict[str, tuple[list[str], dict[str, Any]]] = {
        "configmap.yaml": _configmap(facts),
        "secret.yaml": _secret(facts),
        "web-deployment.yaml": _web_deployment(facts),
        "web-service.yaml": _web_service(facts),
        "web-pdb.yaml": _pdb(facts, "web"),
        "worker-deployment.yaml": _worker_deployment(facts),
        "worker-pdb.yaml": _pdb(facts, "worker"),
        "worker-scaledobject.yaml": _scaled_object(facts),
        "worker-triggerauthentication.yaml": _trigger_auth(facts),
        "autoscaler-secret.yaml": _autoscaler_secret(facts),
    }
    if facts.scheduler_command is not None:
        objects["scheduler-deployment.yaml"] = _scheduler_deployment(facts)
    files = {name: _document(comments, body) for name, (comments, body) in objects.items()}
    files["kustomization.yaml"] = _kustomization(facts, sorted(objects))
    return dict(sorted(files.items()))


class _PlainDumper(yaml.SafeDumper):
    """Writes a value shared by several places in full each time: no &anchors."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _document(comments: list[str], body: dict[str, Any]) -> str:
    header = "".join(f"# {line}\n" if line else "#\n" for line in comments)
    text = yaml.dump(
        body, Dumper=_PlainDumper, sort_keys=False, default_flow_style=False, width=100
    )
    return header + text


def _labels(facts: K8sFacts, component: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": facts.name, "app.kubernetes.io/component": component}


def _meta(facts: K8sFacts, component: str, name: str | None = None) -> dict[str, Any]:
    return {"name": name or f"{facts.name}-{component}", "labels": _labels(facts, component)}


def _configmap(facts: K8sFacts) -> tuple[list[str], dict[str, Any]]:
    data = {s.env_name: s.value for s in facts.settings if not s.secret}
    comments = [
        "The settings that are not secret, named as the project's Settings class reads",
        "them from the environment (its env_prefix included). Values are its defaults.",
    ]
    body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(facts, "config")}
    return comments, {**body, "data": data}


def _secret(facts: K8sFacts) -> tuple[list[str], dict[str, Any]]:
    data = {s.env_name: s.value for s in facts.settings if s.secret}
    comments = [
        "Credentials and URLs (a URL may carry a password), named as the Settings class",
        "reads them. PLACEHOLDERS: set real values before the first deploy, or take",
        "this file out of kustomization.yaml and create the Secret your own way",
        "(kubectl create secret, sealed-secrets, external-secrets) under this name.",
    ]
    body = {"apiVersion": "v1", "kind": "Secret", "metadata": _meta(facts, "secrets")}
    return comments, {**body, "type": "Opaque", "stringData": data}


def _autoscaler_secret(facts: K8sFacts) -> tuple[list[str], dict[str, Any]]:
    queue = facts.queue
    if queue.broker == "rabbitmq":
        data = {"host": _in_cluster(queue.broker_url_default, "rabbitmq")}
        what = f"host: the AMQP URL of {queue.broker_env} (user, password and vhost in it)"
    else:
        data = {"address": "redis:6379", "password": ""}
        what = (
            f"address (host:port) and password of the Redis in {queue.broker_env}: "
            "KEDA's Redis scalers take them apart, not as a URL"
        )
    comments = [
        "What KEDA's operator connects to the broker with (worker-triggerauthentication).",
        what,
        "PLACEHOLDERS: keep them equal to the broker settings in the app's Secret.",
    ]
    body = {"apiVersion": "v1", "kind": "Secret", "metadata": _meta(facts, "autoscaler-auth")}
    return comments, {**body, "type": "Opaque", "stringData": data}


def _in_cluster(url: str, service: str) -> str:
    return url.replace("@localhost:", f"@{service}:").replace("//localhost:", f"//{service}:")


def _env_from(facts: K8sFacts) -> list[dict[str, Any]]:
    return [
        {"configMapRef": {"name": f"{facts.name}-config"}},
        {"secretRef": {"name": f"{facts.name}-secrets"}},
    ]


def _container(
    facts: K8sFacts, name: str, command: tuple[str, ...], resources: dict[str, Any]
) -> dict[str, Any]:
    return {
        "name": name,
        # the image kustomization.yaml's `images:` sets
        "image": facts.name,
        "command": list(command),
        "envFrom": _env_from(facts),
        "resources": resources,
        "securityContext": {"allowPrivilegeEscalation": False},
    }


def _pod(facts: K8sFacts, component: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"labels": _labels(facts, component)}, "spec": spec}


def _web_deployment(facts: K8sFacts) -> tuple[list[str], dict[str, Any]]:
    container = _container(
        facts,
        "web",
        facts.web_command,
        {"requests": {"cpu": "100m", "memory": "256Mi"}, "limits": {"memory": "512Mi"}},
    )
    container["ports"] = [{"name": "http", "containerPort": WEB_PORT}]
    if facts.web_health_path:
        check: dict[str, Any] = {"httpGet": {"path": facts.web_health_path, "port": "http"}}
        why = f"Probes: the app's own health route, GET {facts.web_health_path}."
    else:
        check = {"tcpSocket": {"port": "http"}}
        why = (
            "Probes: a TCP check (the app has no health route; every task route needs a "
            "token): uvicorn accepts connections only once the app's lifespan started."
        )
    container["readinessProbe"] = {**check, "periodSeconds": 10, "failureThreshold": 3}
    container["livenessProbe"] = {
        **check,
        "initialDelaySeconds": 10,
        "periodSeconds": 20,
        "failureThreshold": 3,
    }
    comments = [
        "The FastAPI app, served by uvicorn.",
        why,
        "Rolling updates start a new pod before stopping an old one (maxUnavailable 0).",
    ]
    body = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(facts, "web"),
        "spec": {
            "replicas": WEB_REPLICAS,
            "selector": {"matchLabels": _labels(facts, "web")},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
            },
            "template": _pod(facts, "web", {"containers": [container]}),
        },
    }
    return comments, body


def _web_service(facts: K8sFacts) -> tuple[list[str], dict[str, Any]]:
    body = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(facts, "web"),
        "spec": {
            "selector": _labels(facts, "web"),
            "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
        },
    }
    return ["The web app inside the cluster (put your Ingress or Gateway in front)."], body


def _pdb(facts: K8sFacts, component: str) -> tuple[list[str], dict[str, Any]]:
    comments = [
        f"A voluntary disruption (a node drain) takes at most one {component} pod at a time;",
        "maxUnavailable rather than minAvailable, so a single replica can still be drained.",
    ]
    body = {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _meta(facts, component),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": _labels(facts, component)}},
    }
    return comments, body


def _worker_deployment(facts: K8sFacts) -> tuple[list[str], dict[str, Any]]:
    container = _container(
        facts,
        "worker",
        facts.worker_command,
        {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"memory": "1Gi"}},
    )
    if facts.worker_env:
        container["env"] = [{"name": k, "value": v} for k, v in facts.worker_env]
    container["livenessProbe"] = {
        "exec": {"command": list(facts.worker_liveness)},
        "initialDelaySeconds": 30,
        "periodSeconds": 60,
        "timeoutSeconds": 30,
        # three missed checks in a row: a worker busy with long tasks still answers
        "failureThreshold": 3,
    }
    comments = [
        f"The {facts.runner} worker. Its replicas are KEDA's (worker-scaledobject.yaml):",
        "this Deployment sets none, so an apply never resets them.",
        f"Liveness: {facts.worker_liveness_reason}.",
        f"terminationGracePeriodSeconds: {facts.worker_grace_reason} plus a margin, so",
        "a stopped worker hands its tasks back before the kubelet kills it.",
        "Rolling updates never leave zero workers (maxUnavailable 0).",
    ]
    if facts.scheduler_command is None:
        comments.append(
            "arq runs its cron jobs inside the workers (unique=True: one run per firing)."
        )
    body = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(facts, "worker"),
        "spec": {
            "selector": {"matchLabels": _labels(facts, "worker")},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
            },
            "template": _pod(
                facts,
                "worker",
                {
                    "terminationGracePeriodSeconds": facts.worker_grace_seconds,
                    "containers": [container],
                },
            ),
        },
    }
    return comments, body


def _scheduler_deployment(facts: K8sFacts) -> tuple[list[str], dict[str, Any]]:
    assert facts.scheduler_command is not None
    what = "celery beat" if facts.runner == "celery" else "the taskiq scheduler"
    container = _container(
        facts,
        "scheduler",
        facts.scheduler_command,
        {"requests": {"cpu": "50m", "memory": "128Mi"}, "limits": {"memory": "256Mi"}},
    )
    comments = [
        f"Exactly one {what}: Recreate stops the old pod before the new one starts, so",
        "two never overlap during a deploy; the generated lock in Redis is the second",
        "guard (a second scheduler sends nothing twice).",
    ]
    body = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(facts, "scheduler"),
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": _labels(facts, "scheduler")},
            "strategy": {"type": "Recreate"},
            "template": _pod(facts, "scheduler", {"containers": [container]}),
        },
    }
    return comments, body


def _scaled_object(facts: K8sFacts) -> tuple[list[str], dict[str, Any]]:
    triggers = worker_triggers(facts)
    comments = [
        f"KEDA scales {facts.name}-worker on the {facts.runner} queue as the generated code",
        f"names it ({facts.queue.broker}). With several triggers the autoscaler follows the",
        "one that asks for the most replicas. Triggers, in order:",
    ]
    comments += [f"- {trigger.type}: {trigger.why}" for trigger in triggers]
    auth = {"name": f"{facts.name}-broker"}
    body = {
        "apiVersion": KEDA_API,
        "kind": "ScaledObject",
        "metadata": _meta(facts, "worker"),
        "spec": {
            "scaleTargetRef": {"name": f"{facts.name}-worker"},
            "minReplicaCount": MIN_WORKERS,
            "maxReplicaCount": MAX_WORKERS,
            "pollingInterval": 15,
            # scale down only after five quiet minutes: a long task is not cut short by
            # a queue that emptied a moment ago
            "cooldownPeriod": 300,
            "triggers": [
                {"type": t.type, "metadata": dict(t.metadata), "authenticationRef": auth}
                for t in triggers
            ],
        },
    }
    return comments, body


def _trigger_auth(facts: K8sFacts) -> tuple[list[str], dict[str, Any]]:
    comments = ["The broker credentials KEDA's scaler uses, from the autoscaler Secret."]
    body = {
        "apiVersion": KEDA_API,
        "kind": "TriggerAuthentication",
        "metadata": _meta(facts, "worker", f"{facts.name}-broker"),
        "spec": {
            "secretTargetRef": [
                {"parameter": parameter, "name": f"{facts.name}-autoscaler-auth", "key": key}
                for parameter, key in trigger_auth_parameters(facts)
            ]
        },
    }
    return comments, body


def _kustomization(facts: K8sFacts, resources: list[str]) -> str:
    comments = [
        f"Kustomize base for {facts.name} ({facts.runner}, {facts.queue.broker} broker),",
        "generated by bgtasks. The cluster needs KEDA 2.x for the ScaledObject.",
        "Set the image: kustomize edit set image "
        f"{facts.name}=registry.example.com/{facts.name}:1.0.0",
    ]
    body = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": resources,
        "images": [{"name": facts.name, "newName": facts.name, "newTag": "latest"}],
    }
    return _document(comments, body)
