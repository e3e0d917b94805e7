"""Shared fixtures: small specs, the device under test and a real S3-compatible server on
127.0.0.1."""

from __future__ import annotations

import copy
import os
import socket

import pytest
import torch
import yaml

DEVICE_ENV = "LOTTERYLAB_TEST_DEVICE"
TEST_DEVICES = ("cpu", "cuda")


def pytest_addoption(parser):
    parser.addoption(
        "--device",
        default=None,
        choices=TEST_DEVICES,
        help=f"device of the device-aware tests (default: ${DEVICE_ENV}, else cpu)",
    )


def requested_device(config) -> str:
    """``--device``, else ``$LOTTERYLAB_TEST_DEVICE``, else the CPU; CUDA must be visible."""
    name = config.getoption("--device") or os.environ.get(DEVICE_ENV) or "cpu"
    if name not in TEST_DEVICES:
        raise pytest.UsageError(f"{DEVICE_ENV}={name!r} is not one of {list(TEST_DEVICES)}")
    if name == "cuda" and not torch.cuda.is_available():
        raise pytest.UsageError("tests asked to run on cuda, but torch sees no CUDA device")
    return name


def pytest_configure(config):
    requested_device(config)  # a bad choice stops the run before any test


@pytest.fixture(scope="session")
def device(request) -> torch.device:
    """Where the device-aware tests compute; their references stay on the CPU.

    On CUDA, TF32 is off and cuDNN picks deterministic kernels: the tests compare float32
    results with float32/float64 references, and masks of two identical calls with each other.
    """
    name = requested_device(request.config)
    if name == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    return torch.device(name)


TINY_SPEC = {
    "name": "tiny",
    "kind": "imp",
    "seeds": [0, 1],
    "datasets": [
        {
            "name": "nlgp",
            "type": "nlgp",
            "grid": 8,
            "channels": 1,
            "xi": [1.0, 3.0],
            "gain": 3.0,
            "n_train": 400,
            "n_test": 200,
            "seed": 0,
        },
        {"name": "nlgp_clone", "type": "gaussian_clone", "of": "nlgp", "seed": 1},
    ],
    "model": {"name": "fcn", "hidden": [32, 16], "batch_norm": True, "init": "glorot_normal"},
    "training": {"lr": 0.1, "batch_size": 50, "steps": 60, "rewind_step": 5},
    "imp": {"rounds": 3, "fraction": 0.4, "scope": "layer", "baselines": ["oneshot", "random"]},
    "resources": {"cpu": 1, "gpu": 0},
    "run": {"max_failures": 0},
}


@pytest.fixture
def tiny_spec_dict() -> dict:
    return copy.deepcopy(TINY_SPEC)


TINY_PAI = {
    "name": "tinypai",
    "kind": "pai",
    "seeds": [0],
    "datasets": [
        {
            "name": "nlgp3",
            "type": "nlgp",
            "grid": 8,
            "channels": 3,
            "xi": [1.0, 2.0, 4.0],
            "gain": 3.0,
            "n_train": 240,
            "n_test": 120,
            "seed": 0,
        }
    ],
    "model": {"name": "resnet20"},
    "training": {
        "optimizer": "nesterov",
        "lr": 0.05,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "batch_size": 60,
        "epochs": 2,
        "lr_drops": [1],
        "augment": "crop_flip",
        "eval_batch_size": 120,
    },
    "pai": {
        "methods": ["snip", "px"],
        "densities": [0.2],
        "scoring_batches": 1,
        "scoring_batch_size": 60,
    },
    "resources": {"cpu": 1, "gpu": 0},
    "run": {"max_failures": 0},
}


@pytest.fixture
def pai_spec_dict() -> dict:
    return copy.deepcopy(TINY_PAI)


@pytest.fixture
def write_spec(tmp_path):
    def write(data: dict, name: str = "spec.yaml") -> str:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return str(path)

    return write


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server in a thread on 127.0.0.1; yields its endpoint URL."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    saved = {
        k: os.environ.get(k)
        for k in (
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_DEFAULT_REGION",
            "AWS_ENDPOINT_URL",
        )
    }
    os.environ.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL=endpoint,
    )
    yield endpoint
    server.stop()
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def s3_bucket(s3_server, request):
    import boto3

    name = "lotterylab-" + request.node.name.lower().replace("_", "-")[:40]
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket=name)
    return name
