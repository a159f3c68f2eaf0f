"""The Kubernetes manifests (bgtasks_gen.k8s): valid objects for a pinned Kubernetes and
KEDA's CRDs, a base `kubectl kustomize` builds, names as the settings read them, values
read from the generated code, and drift found when the project changes under them."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from bgtasks_gen.addtask import load_project
from bgtasks_gen.k8s import k8s_drift, k8s_files

REPO = Path(__file__).resolve().parents[1]
KUBERNETES_VERSION = "1.32.0"  # the cluster version the manifests are checked against
KEDA_CRDS = Path(os.environ.get("BGTASKS_KEDA_CRDS", "/work/shared/k8s/keda-crds"))
IN_CI = os.environ.get("CI", "").lower() == "true"
COMBOS = [
    ("celery", "redis"),
    ("celery", "rabbitmq"),
    ("arq", "redis"),
    ("taskiq", "redis"),
    ("taskiq", "rabbitmq"),
]


def missing(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"required for CI: {reason}")
    pytest.skip(reason)


def scaffold(dest: Path, runner: str, broker: str) -> Path:
    project = dest / f"{runner}-{broker}"
    shutil.copytree(REPO / "examples" / "layered", project)
    result = subprocess.run(
        [sys.executable, "-m", "bgtasks_gen", "init", str(project), "--runner", runner]
        + ["--broker", broker, "--no-verify", "--no-deps"],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "BGTASKS_RESOLVE_TIMEOUT": "0"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return project


@pytest.fixture(scope="module")
def projects(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], Path]:
    dest = tmp_path_factory.mktemp("k8s")
    return {combo: scaffold(dest, *combo) for combo in COMBOS}


def write_files(project: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = project / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def documents(files: dict[str, str]) -> Iterator[tuple[str, dict[str, object]]]:
    for rel, text in files.items():
        for body in yaml.safe_load_all(text):
            yield rel, body


def crd_schemas() -> dict[str, dict[str, object]]:
    if not KEDA_CRDS.is_dir():
        missing(f"KEDA's CRDs are not at {KEDA_CRDS}")
    schemas = {}
    for path in KEDA_CRDS.glob("*.yaml"):
        crd = yaml.safe_load(path.read_text(encoding="utf-8"))
        for version in crd["spec"]["versions"]:
            key = f"{crd['spec']['group']}/{version['name']}/{crd['spec']['names']['kind']}"
            schemas[key] = version["schema"]["openAPIV3Schema"]
    return schemas


def by_kind(files: dict[str, str], kind: str) -> list[dict[str, object]]:
    return [body for _, body in documents(files) if body.get("kind") == kind]


def scaled_object(files: dict[str, str]) -> dict[str, object]:
    (found,) = by_kind(files, "ScaledObject")
    return found


def deployment(files: dict[str, str], component: str) -> dict[str, object]:
    for body in by_kind(files, "Deployment"):
        if body["metadata"]["labels"]["app.kubernetes.io/component"] == component:  # type: ignore[index]
            return body
    raise AssertionError(f"no {component} Deployment")


@pytest.mark.parametrize("combo", COMBOS, ids=lambda c: "-".join(c))
def test_every_manifest_is_valid(projects: dict[tuple[str, str], Path], combo) -> None:  # type: ignore[no-untyped-def]
    files = k8s_files(load_project(projects[combo]))
    schemas = crd_schemas()
    checked = set()
    for rel, body in documents(files):
        kind = str(body["kind"])
        if kind == "Kustomization":
            continue
        if str(body["apiVersion"]).startswith("keda.sh/"):
            schema = schemas[f"{body['apiVersion']}/{kind}"]
            errors = list(jsonschema.Draft7Validator(schema).iter_errors(body))
            assert not errors, f"{rel}: {errors[0].message} at {list(errors[0].path)}"
        else:
            try:
                kubernetes_validate.validate(body, KUBERNETES_VERSION, strict=True)
            except kubernetes_validate.ValidationError as error:
                pytest.fail(f"{rel}: {str(error).splitlines()[0]}")
        checked.add(kind)
    assert {"Deployment", "Service", "PodDisruptionBudget", "ConfigMap", "Secret"} <= checked
    assert {"ScaledObject", "TriggerAuthentication"} <= checked


def test_an_invalid_object_is_refused_by_the_same_checks() -> None:
    bad = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"}}
    bad["spec"] = {"selector": {}, "template": {"spec": {"containers": [], "bogus": 1}}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBERNETES_VERSION, strict=True)
    schema = crd_schemas()["keda.sh/v1alpha1/ScaledObject"]
    wrong = {"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject", "spec": {}}
    assert list(jsonschema.Draft7Validator(schema).iter_errors(wrong))


@pytest.mark.parametrize("combo", COMBOS, ids=lambda c: "-".join(c))
def test_kubectl_kustomize_builds_the_base(projects, combo, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        missing("kubectl is not installed")
    files = k8s_files(load_project(projects[combo]), folder="deploy/k8s")
    write_files(tmp_path, files)
    result = subprocess.run(
        [str(kubectl), "kustomize", str(tmp_path / "deploy/k8s")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    built = list(yaml.safe_load_all(result.stdout))
    kinds = sorted(str(body["kind"]) for body in built)
    expected = sorted(str(b["kind"]) for _, b in documents(files) if b["kind"] != "Kustomization")
    assert kinds == expected
    # the image is the kustomize parameter: set by `images:`, not written in a container
    images = {
        c["image"]
        for body in built
        if body["kind"] == "Deployment"
        for c in body["spec"]["template"]["spec"]["containers"]
    }
    assert images == {"layered-shop:latest"}


def test_files_are_deterministic_lf_and_end_with_a_newline(projects) -> None:  # type: ignore[no-untyped-def]
    project = load_project(projects[("celery", "redis")])
    first, second = k8s_files(project), k8s_files(project)
    assert first == second
    assert all(rel.startswith("deploy/k8s/") for rel in first)
    for rel, text in first.items():
        assert text.endswith("\n") and "\r" not in text, rel
    assert sorted(k8s_files(project, folder="ops/kube")) == sorted(
        rel.replace("deploy/k8s/", "ops/kube/") for rel in first
    )


def test_celery_redis_trigger_reads_every_priority_list(projects) -> None:  # type: ignore[no-untyped-def]
    files = k8s_files(load_project(projects[("celery", "redis")]))
    triggers = scaled_object(files)["spec"]["triggers"]  # type: ignore[index]
    assert {t["type"] for t in triggers} == {"redis"}
    # kombu's default priority steps (0, 3, 6, 9) and its separator, as the queue's keys
    assert [t["metadata"]["listName"] for t in triggers] == [
        "celery",
        "celery\x06\x163",
        "celery\x06\x166",
        "celery\x06\x169",
    ]
    auth = by_kind(files, "TriggerAuthentication")[0]
    assert {r["parameter"] for r in auth["spec"]["secretTargetRef"]} == {"address", "password"}  # type: ignore[index]


def test_trigger_per_runner_and_broker(projects) -> None:  # type: ignore[no-untyped-def]
    def triggers(combo: tuple[str, str]) -> list[dict[str, object]]:
        files = k8s_files(load_project(projects[combo]))
        return scaled_object(files)["spec"]["triggers"]  # type: ignore[index,no-any-return]

    (arq,) = triggers(("arq", "redis"))
    assert arq["type"] == "redis" and arq["metadata"]["listName"] == "arq:queue"  # type: ignore[index]
    (stream,) = triggers(("taskiq", "redis"))
    assert stream["type"] == "redis-streams"
    assert stream["metadata"]["stream"] == "bgtasks:taskiq"  # type: ignore[index]
    assert stream["metadata"]["consumerGroup"] == "bgtasks"  # type: ignore[index]
    assert "lagCount" in stream["metadata"]  # type: ignore[operator]
    (rabbit,) = triggers(("taskiq", "rabbitmq"))
    assert rabbit["type"] == "rabbitmq"
    assert rabbit["metadata"]["queueName"] == "bgtasks.taskiq"  # type: ignore[index]
    (celery_rabbit,) = triggers(("celery", "rabbitmq"))
    assert celery_rabbit["metadata"]["queueName"] == "celery"  # type: ignore[index]


def test_arq_manifest_says_why_its_sorted_set_can_be_read(projects) -> None:  # type: ignore[no-untyped-def]
    files = k8s_files(load_project(projects[("arq", "redis")]))
    text = files["deploy/k8s/worker-scaledobject.yaml"]
    assert "sorted set" in text and "ZCARD" in text
    # cron runs inside arq's workers: no scheduler process
    assert "deploy/k8s/scheduler-deployment.yaml" not in files


@pytest.mark.parametrize("combo", [("celery", "redis"), ("taskiq", "redis")], ids="-".join)
def test_one_scheduler_that_never_overlaps(projects, combo) -> None:  # type: ignore[no-untyped-def]
    files = k8s_files(load_project(projects[combo]))
    scheduler = deployment(files, "scheduler")
    assert scheduler["spec"]["replicas"] == 1  # type: ignore[index]
    assert scheduler["spec"]["strategy"] == {"type": "Recreate"}  # type: ignore[index]


@pytest.mark.parametrize("combo", COMBOS, ids=lambda c: "-".join(c))
def test_rolling_updates_never_leave_zero_pods(projects, combo) -> None:  # type: ignore[no-untyped-def]
    files = k8s_files(load_project(projects[combo]))
    for component in ("web", "worker"):
        strategy = deployment(files, component)["spec"]["strategy"]  # type: ignore[index]
        assert strategy["rollingUpdate"]["maxUnavailable"] == 0  # type: ignore[index]
    assert scaled_object(files)["spec"]["minReplicaCount"] >= 1  # type: ignore[index,operator]
    # KEDA owns the worker's replicas: an apply must not reset them
    assert "replicas" not in deployment(files, "worker")["spec"]  # type: ignore[operator]


def test_grace_period_is_read_from_the_generated_shutdown_timeout(tmp_path: Path) -> None:
    project = scaffold(tmp_path, "celery", "redis")
    pod = deployment(k8s_files(load_project(project)), "worker")["spec"]["template"]["spec"]  # type: ignore[index]
    assert pod["terminationGracePeriodSeconds"] > 30  # type: ignore[index,operator]
    celery_app = project / "app/tasks/celery_app.py"
    text = celery_app.read_text(encoding="utf-8")
    celery_app.write_text(
        text.replace("SOFT_SHUTDOWN_TIMEOUT = 30", "SOFT_SHUTDOWN_TIMEOUT = 120"), encoding="utf-8"
    )
    pod = deployment(k8s_files(load_project(project)), "worker")["spec"]["template"]["spec"]  # type: ignore[index]
    assert pod["terminationGracePeriodSeconds"] > 120  # type: ignore[index,operator]


def test_worker_liveness_is_the_runners_own_signal(projects) -> None:  # type: ignore[no-untyped-def]
    def probe(combo: tuple[str, str]) -> str:
        files = k8s_files(load_project(projects[combo]))
        container = deployment(files, "worker")["spec"]["template"]["spec"]["containers"][0]  # type: ignore[index]
        return " ".join(container["livenessProbe"]["exec"]["command"])  # type: ignore[index]

    assert "inspect ping --destination celery@$HOSTNAME" in probe(("celery", "redis"))
    assert probe(("arq", "redis")).startswith("arq --check app.tasks.arq_worker.WorkerSettings")
    assert "xinfo_consumers('bgtasks:taskiq', 'bgtasks')" in probe(("taskiq", "redis"))


def test_web_probe_uses_the_health_route_else_tcp(tmp_path: Path) -> None:
    project = scaffold(tmp_path, "arq", "redis")
    web = deployment(k8s_files(load_project(project)), "web")
    container = web["spec"]["template"]["spec"]["containers"][0]  # type: ignore[index]
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"  # type: ignore[index]
    main = project / "app/main.py"
    main.write_text(
        main.read_text(encoding="utf-8").replace(
            "app.include_router(health.router)", 'app.include_router(health.router, prefix="/x")'
        ),
        encoding="utf-8",
    )
    web = deployment(k8s_files(load_project(project)), "web")
    container = web["spec"]["template"]["spec"]["containers"][0]  # type: ignore[index]
    assert "tcpSocket" in container["livenessProbe"]  # type: ignore[operator]


def test_settings_names_follow_env_prefix(tmp_path: Path) -> None:
    source = tmp_path / "src"
    shutil.copytree(REPO / "examples" / "layered", source / "layered")
    config = source / "layered/app/core/config.py"
    text = config.read_text(encoding="utf-8")
    config.write_text(
        text.replace(
            'SettingsConfigDict(env_file=".env"',
            'SettingsConfigDict(env_prefix="SHOP_", env_file=".env"',
        ),
        encoding="utf-8",
    )
    assert 'env_prefix="SHOP_"' in config.read_text(encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "bgtasks_gen", "init", str(source / "layered")]
        + ["--runner", "taskiq", "--no-verify", "--no-deps"],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "BGTASKS_RESOLVE_TIMEOUT": "0"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    files = k8s_files(load_project(source / "layered"))
    names = set(by_kind(files, "ConfigMap")[0]["data"])  # type: ignore[arg-type]
    (app_secret,) = [
        s for s in by_kind(files, "Secret") if s["metadata"]["name"].endswith("-secrets")
    ]  # type: ignore[index]
    names |= set(app_secret["stringData"])  # type: ignore[arg-type]
    assert {"SHOP_TASKIQ_BROKER_URL", "SHOP_REDIS_URL", "SHOP_TASKIQ_TASK_TIMEOUT"} <= names
    env_example = (source / "layered/.env.example").read_text(encoding="utf-8")
    declared = set(re.findall(r"(?m)^([A-Z_]+)=", env_example))
    config_names = set(by_kind(files, "ConfigMap")[0]["data"])  # type: ignore[arg-type]
    secret_names = set(app_secret["stringData"])  # type: ignore[arg-type]
    assert config_names | secret_names == declared
    # the taskiq probe reads the broker URL by the same name
    worker = deployment(files, "worker")["spec"]["template"]["spec"]["containers"][0]  # type: ignore[index]
    assert "SHOP_TASKIQ_BROKER_URL" in worker["livenessProbe"]["exec"]["command"][-1]  # type: ignore[index]


def test_no_drift_when_manifests_match_and_none_without_the_folder(
    projects, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    project_root = tmp_path / "p"
    shutil.copytree(projects[("taskiq", "redis")], project_root)
    project = load_project(project_root)
    assert k8s_drift(project) == []
    write_files(project_root, k8s_files(project))
    assert k8s_drift(project) == []


def test_a_new_celery_queue_is_drift_naming_the_scaled_object(tmp_path: Path) -> None:
    project_root = scaffold(tmp_path, "celery", "redis")
    project = load_project(project_root)
    write_files(project_root, k8s_files(project))
    celery_app = project_root / "app/tasks/celery_app.py"
    text = celery_app.read_text(encoding="utf-8")
    celery_app.write_text(
        text.replace(
            "celery_app.conf.update(\n",
            'celery_app.conf.update(\n    task_default_queue="emails",\n',
            1,
        ),
        encoding="utf-8",
    )
    problems = k8s_drift(load_project(project_root))
    assert any(
        p.startswith("deploy/k8s/worker-scaledobject.yaml: trigger reads list 'celery'")
        and "'emails'" in p
        for p in problems
    ), problems


def test_a_renamed_taskiq_stream_is_drift(tmp_path: Path) -> None:
    project_root = scaffold(tmp_path, "taskiq", "redis")
    write_files(project_root, k8s_files(load_project(project_root)))
    taskiq_app = project_root / "app/tasks/taskiq_app.py"
    text = taskiq_app.read_text(encoding="utf-8")
    taskiq_app.write_text(
        text.replace('STREAM = "bgtasks:taskiq"', 'STREAM = "shop:tasks"'), encoding="utf-8"
    )
    problems = k8s_drift(load_project(project_root))
    assert any(
        p.startswith("deploy/k8s/worker-scaledobject.yaml: trigger reads stream 'bgtasks:taskiq'")
        and "'shop:tasks'" in p
        for p in problems
    ), problems


def test_a_broker_change_is_drift(projects, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    redis_root = tmp_path / "redis"
    shutil.copytree(projects[("celery", "redis")], redis_root)
    # manifests written for RabbitMQ, in a project that uses Redis
    write_files(redis_root, k8s_files(load_project(projects[("celery", "rabbitmq")])))
    problems = k8s_drift(load_project(redis_root))
    assert any(
        p.startswith("deploy/k8s/worker-scaledobject.yaml: triggers are rabbitmq") for p in problems
    ), problems


def test_check_fails_naming_the_manifest_when_the_queue_is_renamed(tmp_path: Path) -> None:
    """The whole path a user takes: `init --with k8s`, `check` green, the queue renamed in
    the code, `check` red naming the ScaledObject, `update` writes it again, green."""
    project = tmp_path / "shop"
    shutil.copytree(REPO / "examples" / "layered", project)

    def bgtasks(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "bgtasks_gen", *args],
            capture_output=True,
            text=True,
            timeout=180,
            env={**os.environ, "BGTASKS_RESOLVE_TIMEOUT": "0"},
        )

    init = bgtasks("init", str(project), "--runner", "taskiq", "--with", "k8s")
    assert init.returncode == 0, init.stdout + init.stderr
    assert bgtasks("check", str(project)).returncode == 0
    taskiq_app = project / "app/tasks/taskiq_app.py"
    text = taskiq_app.read_text(encoding="utf-8")
    assert 'STREAM = "bgtasks:taskiq"' in text
    taskiq_app.write_text(text.replace('STREAM = "bgtasks:taskiq"', 'STREAM = "shop:tasks"'))
    check = bgtasks("check", str(project))
    assert check.returncode == 1, check.stdout
    assert "deploy/k8s/worker-scaledobject.yaml" in check.stdout, check.stdout
    assert "shop:tasks" in check.stdout, check.stdout
    update = bgtasks("update", str(project))
    assert update.returncode == 0, update.stdout + update.stderr
    scaled = yaml.safe_load((project / "deploy/k8s/worker-scaledobject.yaml").read_text())
    assert scaled["spec"]["triggers"][0]["metadata"]["stream"] == "shop:tasks"
    recheck = bgtasks("check", str(project))
    assert recheck.returncode == 0, recheck.stdout
