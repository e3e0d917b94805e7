"""The cluster templates: valid for `ray up` and KubeRay, pinned to the versions lotterylab pins,
and documented."""

from __future__ import annotations

import copy
import json
import re
import shlex
import tomllib
from pathlib import Path

import jsonschema
import pytest
import ray
import ray.autoscaler
import yaml
from packaging.requirements import Requirement
from ray.autoscaler._private.util import prepare_config, validate_config

from lotterylab.cluster.templates import TEMPLATES, TEMPLATES_DIR, template_path

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "README.md"
RAY_UP = ("aws", "gcp")
# instance families with NVIDIA GPUs on EC2
AWS_GPU_FAMILIES = ("g4dn", "g5", "g6", "g6e", "p3", "p4d", "p4de", "p5", "p5e")
SECRET_NAMES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "GOOGLE_APPLICATION_CREDENTIALS")


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def pinned() -> dict[str, Requirement]:
    """The exact versions the project is tested with: constraints.txt (pyproject has ranges)."""
    lines = (ROOT / "constraints.txt").read_text().splitlines()
    found = {}
    for line in lines:
        if line.strip() and not line.startswith("#"):
            requirement = Requirement(line)
            found[requirement.name.lower()] = requirement
    return found


def load(name: str) -> dict:
    return yaml.safe_load(template_path(name).read_text())


def kuberay_documents() -> list[dict]:
    return [d for d in yaml.safe_load_all(template_path("kuberay").read_text()) if d]


def raycluster() -> dict:
    (cluster,) = [d for d in kuberay_documents() if d["kind"] == "RayCluster"]
    return cluster


def pip_requirements(command: str) -> list[str]:
    """The requirement arguments of the `pip install` in a shell command."""
    words = shlex.split(command.split("&&")[0])
    assert words[:2] == ["pip", "install"], command
    return [w for w in words[2:] if not w.startswith("-")]


def worker_types(config: dict) -> list[dict]:
    return [v for k, v in config["available_node_types"].items() if k != config["head_node_type"]]


def containers(cluster: dict) -> list[dict]:
    groups = [cluster["spec"]["headGroupSpec"], *cluster["spec"]["workerGroupSpecs"]]
    return [c for group in groups for c in group["template"]["spec"]["containers"]]


def test_every_shipped_template_is_listed_and_found_by_name():
    assert sorted(p.name for p in TEMPLATES_DIR.glob("*.yaml")) == sorted(TEMPLATES.values())
    for short, file in TEMPLATES.items():
        assert template_path(short) == template_path(file) == TEMPLATES_DIR / file
    allowed = r"'azure' is unknown; allowed: \['aws', 'gcp', 'kuberay'\]"
    with pytest.raises(ValueError, match=allowed):
        template_path("azure")


def test_the_pinned_ray_is_the_installed_ray():
    assert str(pinned()["ray"].specifier) == f"=={ray.__version__}"


@pytest.mark.parametrize("name", TEMPLATES)
def test_every_ray_version_and_image_is_the_installed_ray(name):
    text = template_path(name).read_text()
    images = re.findall(r"rayproject/ray[\w-]*:(\S+)", text)
    assert images, f"{name}: no Ray image"
    python = tuple(int(p) for p in re.findall(r"\d+", pyproject()["requires-python"]))
    for tag in images:
        match = re.fullmatch(r"(\d+\.\d+\.\d+)-py(\d)(\d+)-(gpu|cu\d+)", tag)
        assert match, f"{name}: image tag {tag!r} is not <ray version>-py<XY>-<gpu|cuNNN>"
        assert match[1] == ray.__version__, (name, tag)
        assert (int(match[2]), int(match[3])) >= python, (name, tag)
    pins = re.findall(r"\bray(?:\[[\w,]+\])?==([\w.]+)", text)
    assert pins and set(pins) == {ray.__version__}, (name, pins)
    for secret in SECRET_NAMES:  # credentials come from node roles, never from the template
        assert secret not in text, (name, secret)


@pytest.mark.parametrize("name", RAY_UP)
def test_ray_up_config_passes_rays_own_checks(name):
    config = load(name)
    schema_file = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    jsonschema.validate(config, json.loads(schema_file.read_text()))
    # what `ray up` does before it touches the cloud: defaults merged, then validated
    validate_config(prepare_config(copy.deepcopy(config)))

    assert config["provider"]["type"] == name
    assert config["idle_timeout_minutes"] > 0 and config["max_workers"] >= 1
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"] == {"CPU": 0}  # the head drives; trials go to the workers
    assert worker_types(config)
    for worker in worker_types(config):
        assert worker["min_workers"] == 0 < worker["max_workers"] <= config["max_workers"]
    assert config["docker"]["image"].startswith("rayproject/ray:")


def test_aws_workers_are_spot_gpu_instances():
    config = load("aws")
    for worker in worker_types(config):
        node = worker["node_config"]
        assert node["InstanceMarketOptions"]["MarketType"] == "spot"
        assert node["InstanceType"].split(".")[0] in AWS_GPU_FAMILIES, node["InstanceType"]
        # S3 access through an instance profile, not keys
        assert node["IamInstanceProfile"]["Arn"].startswith("arn:aws:iam::")


def test_gcp_workers_are_spot_vms_with_guest_gpus():
    config = load("gcp")
    for worker in worker_types(config):
        node = worker["node_config"]
        (gpu,) = node["guestAccelerators"]
        assert gpu["acceleratorType"].startswith("nvidia-") and gpu["acceleratorCount"] >= 1
        assert worker["resources"]["GPU"] == gpu["acceleratorCount"]
        scheduling = node["scheduling"]  # a mapping, as the Compute API takes it
        assert scheduling["provisioningModel"] == "SPOT"
        assert scheduling["onHostMaintenance"] == "TERMINATE"  # required with GPUs
        assert node["serviceAccounts"][0]["email"].endswith(".iam.gserviceaccount.com")


@pytest.mark.parametrize("name", RAY_UP)
def test_ray_up_installs_the_synced_checkout_with_the_pinned_torch(name):
    config = load(name)
    (command,) = config["setup_commands"]
    requirements = pip_requirements(command)
    (target,) = config["file_mounts"]
    assert config["file_mounts"][target] == "."  # the checkout `ray up` runs from
    assert target in requirements  # the project itself, so `lotterylab` exists on the head
    wanted = pinned()
    given = {Requirement(r).name: Requirement(r) for r in requirements if r != target}
    for package in ("torch", "torchvision", "ray"):
        assert str(given[package].specifier) == str(wanted[package].specifier), package
    assert str(wanted["torch"].specifier).startswith("==")


def test_kuberay_manifest_has_what_the_operator_needs():
    cluster = raycluster()
    assert cluster["apiVersion"] == "ray.io/v1"
    assert cluster["metadata"]["name"]
    spec = cluster["spec"]
    assert spec["rayVersion"] == ray.__version__
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["autoscalerOptions"]["idleTimeoutSeconds"] > 0
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    ports = {p["containerPort"] for p in head["template"]["spec"]["containers"][0]["ports"]}
    assert {6379, 8265} <= ports  # GCS and the dashboard, which `ray job submit` talks to
    (group,) = spec["workerGroupSpecs"]
    assert group["groupName"] and "rayStartParams" in group
    assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    assert group["maxReplicas"] >= 1
    (worker,) = group["template"]["spec"]["containers"]
    assert int(worker["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    # one image everywhere, the same as the ray up templates'
    images = {c["image"] for c in containers(cluster)}
    assert images == {load("aws")["docker"]["image"]} == {load("gcp")["docker"]["image"]}
    accounts = {
        g["template"]["spec"]["serviceAccountName"]
        for g in [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    }
    defined = {d["metadata"]["name"] for d in kuberay_documents() if d["kind"] == "ServiceAccount"}
    assert accounts <= defined


def test_kuberay_pods_install_exactly_the_pinned_dependencies_then_start_ray():
    cluster = raycluster()
    assert cluster["metadata"]["annotations"]["ray.io/overwrite-container-cmd"] == "true"
    for container in containers(cluster):
        (command,) = container["args"]
        assert command.rstrip().endswith("$KUBERAY_GEN_RAY_START_CMD")
        given = {Requirement(r).name: Requirement(r) for r in pip_requirements(command)}
        declared = {Requirement(r).name: Requirement(r) for r in pyproject()["dependencies"]}
        assert set(given) == set(declared)
        exact = pinned()
        for name, requirement in declared.items():
            # the frameworks exactly as tested, the rest within the project's own ranges
            wanted = exact[name] if name in ("torch", "torchvision", "ray") else requirement
            assert str(given[name].specifier) == str(wanted.specifier), name


def test_the_cluster_guide_covers_every_template_and_step():
    text = DOCS.read_text()
    for file in TEMPLATES.values():
        assert f"lotterylab/cluster/templates/{file}" in text, file
    for step in (
        "ray up",
        "ray job submit",
        "--working-dir .",
        "--address auto",
        "lotterylab resume",
        "lotterylab figures s3://",
        "ray down",
        "ACCOUNT_ID",
        "PROJECT_ID",
    ):
        assert step in text, step
