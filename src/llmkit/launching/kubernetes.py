"""Kubernetes manifests (pure functions of the spec).

train: a ConfigMap with the run config, a headless Service and an Indexed Job with one pod per
node (the completion index is the node rank; pod 0 is the rendezvous host, reachable by its
stable name through the Service). serve: the ConfigMap, a Deployment and a Service, with the
/ready and /health probes. Secrets come from one Secret by `secretKeyRef`, never from the files.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from pathlib import Path

from llmkit.config.schema import RunConfig
from llmkit.errors import ConfigError
from llmkit.launching.base import Echo, Target, main_file
from llmkit.launching.spec import RDZV_PORT, VOLUME_ROOT, Checkpoints, LaunchSpec, dump_yaml

CONFIG_DIR = "/etc/llmkit"
WORKDIR = "/work"


def secret_name(spec: LaunchSpec) -> str:
    """One Secret for the run's train and serve."""
    return f"{spec.job_name.removesuffix('-serve')}-secrets"


def _env(spec: LaunchSpec, names: tuple[str, ...]) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [{"name": "PYTHONUNBUFFERED", "value": "1"}]
    for name in names:
        env.append({"name": name, "valueFrom": {"secretKeyRef": {"name": secret_name(spec), "key": name,
                                                                 "optional": name != spec.api_key_env}}})
    return env


def _volumes(spec: LaunchSpec) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    volumes: list[dict[str, Any]] = [{"name": "config", "configMap": {"name": f"{spec.job_name}-config"}},
                                     {"name": "shm", "emptyDir": {"medium": "Memory"}}]
    mounts: list[dict[str, Any]] = [{"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
                                    {"name": "shm", "mountPath": "/dev/shm"}]
    if spec.checkpoints.claim:
        volumes.append({"name": "runs", "persistentVolumeClaim": {"claimName": spec.checkpoints.claim}})
        mounts.append({"name": "runs", "mountPath": VOLUME_ROOT})
    return volumes, mounts


def _resources(spec: LaunchSpec) -> dict[str, Any]:
    if not spec.gpu:
        return {}
    return {"resources": {"limits": {"nvidia.com/gpu": spec.per_node}}}


def _config_map(spec: LaunchSpec) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": f"{spec.job_name}-config", "labels": {"app.kubernetes.io/name": spec.job_name}},
            "data": {"run.yaml": spec.config_yaml}}


def _train(spec: LaunchSpec) -> list[dict[str, Any]]:
    labels = {"app.kubernetes.io/name": spec.job_name, "app.kubernetes.io/managed-by": "llmkit"}
    head = f"{spec.job_name}-0.{spec.job_name}:{RDZV_PORT}"
    args = spec.train_args("$(JOB_COMPLETION_INDEX)", head)
    volumes, mounts = _volumes(spec)
    container = {"name": "train", "image": spec.image, "workingDir": WORKDIR, "command": args[:1], "args": args[1:],
                 "env": _env(spec, spec.secret_envs), "ports": [{"containerPort": RDZV_PORT, "name": "rdzv"}],
                 "volumeMounts": mounts, **_resources(spec)}
    job = {"apiVersion": "batch/v1", "kind": "Job",
           "metadata": {"name": spec.job_name, "labels": labels},
           "spec": {"completionMode": "Indexed", "completions": spec.nodes, "parallelism": spec.nodes,
                    "backoffLimit": spec.max_restarts * spec.nodes,
                    **({"activeDeadlineSeconds": spec.time_limit_s} if spec.time_limit_s else {}),
                    "template": {"metadata": {"labels": labels},
                                 "spec": {"subdomain": spec.job_name, "restartPolicy": "OnFailure",
                                          # the agent's --stop-timeout, then 30 s to exit
                                          "terminationGracePeriodSeconds": spec.grace_s + 30,
                                          "containers": [container], "volumes": volumes}}}}
    service = {"apiVersion": "v1", "kind": "Service",
               "metadata": {"name": spec.job_name, "labels": labels},
               "spec": {"clusterIP": "None", "publishNotReadyAddresses": True, "selector": labels,
                        "ports": [{"name": "rdzv", "port": RDZV_PORT, "targetPort": RDZV_PORT}]}}
    return [_config_map(spec), service, job]


def _serve(spec: LaunchSpec) -> list[dict[str, Any]]:
    labels = {"app.kubernetes.io/name": spec.job_name, "app.kubernetes.io/managed-by": "llmkit"}
    args = spec.serve_args()
    volumes, mounts = _volumes(spec)
    names = tuple(dict.fromkeys((*spec.secret_envs, *([spec.api_key_env] if spec.api_key_env else []))))

    def probe(path: str, period: int) -> dict[str, Any]:
        return {"httpGet": {"path": path, "port": "http"}, "periodSeconds": period, "failureThreshold": 3}

    container = {"name": "serve", "image": spec.image, "workingDir": WORKDIR, "command": args[:1], "args": args[1:],
                 "env": _env(spec, names), "ports": [{"containerPort": spec.serve_port, "name": "http"}],
                 "readinessProbe": probe("/ready", 5), "livenessProbe": probe("/health", 10),
                 "startupProbe": {**probe("/health", 5), "failureThreshold": 60},
                 "volumeMounts": mounts, **_resources(spec)}
    deployment = {"apiVersion": "apps/v1", "kind": "Deployment",
                  "metadata": {"name": spec.job_name, "labels": labels},
                  "spec": {"replicas": 1, "selector": {"matchLabels": labels},
                           "template": {"metadata": {"labels": labels},
                                        "spec": {"terminationGracePeriodSeconds": int(spec.drain_timeout_s) + 10,
                                                 "containers": [container], "volumes": volumes}}}}
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": spec.job_name, "labels": labels},
               "spec": {"selector": labels, "ports": [{"name": "http", "port": spec.serve_port, "targetPort": "http"}]}}
    return [_config_map(spec), deployment, service]


def secret_command(spec: LaunchSpec) -> str:
    """The kubectl line that makes the Secret from the submitting shell's variables (values stay there)."""
    names = list(dict.fromkeys((*spec.secret_envs, *([spec.api_key_env] if spec.what == "serve" and spec.api_key_env
                                                     else []))))
    literals = " ".join(f'--from-literal={n}="${n}"' for n in names)
    return f"kubectl create secret generic {secret_name(spec)} {literals}".rstrip()


def render(spec: LaunchSpec) -> dict[str, str]:
    pod = replace(spec, config_path=f"{CONFIG_DIR}/run.yaml")  # the ConfigMap's mount in the pod
    docs = _train(pod) if spec.what == "train" else _serve(pod)
    text = dump_yaml(docs)
    header = (f"# llmkit launch {spec.llmkit_version}: run '{spec.name}' ({spec.what}) on Kubernetes.\n"
              f"# Secrets first (values come from your shell, never from this file):\n#   {secret_command(spec)}\n"
              f"# then: kubectl apply -f {spec.out}/{spec.what}.yaml\n")
    if spec.what == "serve":
        where = (f"the volume claim {spec.checkpoints.claim}" if spec.checkpoints.claim
                 else f"the image (build it after training, from the folder that holds {spec.runs_root}/)")
        header += f"# The model: {spec.run_dir}/final, from {where}.\n"
    return {f"{spec.what}.yaml": header + text}


class Kubernetes(Target):
    """An Indexed Job (one pod per node) and a headless Service for the rendezvous; the image must
    hold llmkit and the run's data."""

    name = "kubernetes"
    title = "Kubernetes"
    volumes = True
    ephemeral_disks = True

    def check(self, cfg: RunConfig, what: str, checkpoints: Checkpoints) -> list[str]:
        if not cfg.launch.image:
            raise ConfigError("Kubernetes runs containers: launch.image is not set",
                              "the pods need an image with llmkit and the run's data in it",
                              "build one with `llmkit launch --target docker` and set launch.image to its tag")
        return []

    def render(self, spec: LaunchSpec) -> dict[str, str]:
        return render(spec)

    def submit(self, spec: LaunchSpec, folder: Path, files: dict[str, str], submit: bool, echo: Echo) -> None:
        path = (folder / main_file(files)).as_posix()
        echo(f"secrets: {secret_command(spec)}")
        echo(f"{'submit' if submit else 'start'}: kubectl apply -f {path}"
             + ("  (llmkit does not call kubectl; run these two lines)" if submit else ""))


TARGET = Kubernetes()
