"""Keeping cloud secrets out of Ray: secret variables move to a private credentials file.

Ray Tune copies the driver's ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_SESSION_TOKEN`` and ``AWS_SECURITY_TOKEN`` into the runtime environment of every
trial (``ray.tune.execution.class_cache``), and Ray's runtime-env agent writes runtime
environments in plain text into its logs under the session directory
(``/tmp/ray/session_*/logs``). No other secret variable is copied by Tune (the rest of its
list are Ray Train switches; Ray's W&B callback, which copies ``WANDB_API_KEY``, is not
used here), and the GCS client reads ``GOOGLE_APPLICATION_CREDENTIALS``, a path, not a
secret.

:func:`hide_secrets` runs before Ray starts. When a secret is in the environment it writes
the AWS variables as a profile of an AWS shared-credentials file (mode 0600, in a fresh
0700 directory of this user under ``$XDG_RUNTIME_DIR`` or the temp dir), removes them from
the environment and sets ``AWS_SHARED_CREDENTIALS_FILE`` and ``AWS_PROFILE``, which are not
secret. botocore, s3fs and pyarrow read that file, so the driver, Tune's storage sync and,
on an embedded Ray, every trial (its processes inherit the driver's environment)
authenticate exactly as before while Tune finds nothing to copy. The profile also carries
the settings of the profile it replaces (region, endpoint, addressing style), so a switch
of profile changes nothing but where the secret lives. Endpoint and region variables stay
in the environment. The file is removed when the driver disconnects or exits; one left
by a killed driver is removed by the next driver of this user on the host.

Multi-node clusters: the file exists on the driver's node only, and Ray workers take their
environment from the raylet of their own node, never from the driver (``--address``). No
secret is sent through Ray, so trials authenticate with what their node has: an instance
profile or workload identity (EC2 instance role, EKS IRSA, GKE workload identity), or a
credentials file or variables given to ``ray start`` on every node. An embedded Ray is one
node, the driver's, and needs nothing more.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import os
import re
import shutil
import tempfile
from collections.abc import Mapping

#: what Tune copies into trials and what must never reach them
SECRET_VARIABLES = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN")
#: moved with the secrets: one credential, so it must come from one place
MOVED_VARIABLES = ("AWS_ACCESS_KEY_ID", *SECRET_VARIABLES)
POINTER_VARIABLES = ("AWS_SHARED_CREDENTIALS_FILE", "AWS_PROFILE")
PROFILE = "lotterylab"
DIR_PREFIX = "lotterylab-credentials-"
CREDENTIALS_FILE = "credentials"

# keys of a profile that choose or hold a credential: the moved variables replace them
_CREDENTIAL_KEYS = re.compile(
    r"aws_access_key_id|aws_secret_access_key|aws_session_token|aws_security_token|"
    r"role_arn|source_profile|credential_source|credential_process|web_identity_token_file|"
    r"role_session_name|external_id|mfa_serial|duration_seconds|sso_.*|login_session"
)


@dataclasses.dataclass(frozen=True)
class HiddenCredentials:
    """Where the secrets went and what the environment held before, to undo the move."""

    path: str
    profile: str
    previous: dict[str, str | None]


def _private_base() -> str:
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime) and os.access(runtime, os.W_OK | os.X_OK):
        return runtime
    return tempfile.gettempdir()


def _sweep_stale(base: str) -> None:
    """Remove credential folders of this user's drivers that died without cleaning up."""
    try:
        names = os.listdir(base)
    except OSError:
        return
    for name in names:
        match = re.fullmatch(re.escape(DIR_PREFIX) + r"(\d+)-\w+", name)
        path = os.path.join(base, name)
        if match is None or int(match.group(1)) == os.getpid():
            continue
        try:
            if os.lstat(path).st_uid != os.getuid():
                continue
            os.kill(int(match.group(1)), 0)
        except ProcessLookupError:
            shutil.rmtree(path, ignore_errors=True)
        except OSError:
            continue


def _profile_settings() -> dict[str, object]:
    """The non-credential settings of the profile in use, from the user's AWS config files."""
    try:
        import botocore.exceptions
        import botocore.session
    except ImportError:
        return {}
    session = botocore.session.Session()
    try:
        scoped = session.get_scoped_config()
    except botocore.exceptions.BotoCoreError:
        return {}
    return {k: v for k, v in scoped.items() if not _CREDENTIAL_KEYS.fullmatch(k)}


def _ini_value(value: object) -> str:
    if isinstance(value, dict):  # a nested section such as ``s3 = \n addressing_style = path``
        return "".join(f"\n  {k} = {v}" for k, v in value.items())
    return str(value)


def _profile_text(environ: Mapping[str, str], settings: dict[str, object]) -> str:
    lines = [f"[{PROFILE}]"]
    if "AWS_ACCESS_KEY_ID" in environ:
        lines.append(f"aws_access_key_id = {environ['AWS_ACCESS_KEY_ID']}")
    if "AWS_SECRET_ACCESS_KEY" in environ:
        lines.append(f"aws_secret_access_key = {environ['AWS_SECRET_ACCESS_KEY']}")
    token = environ.get("AWS_SESSION_TOKEN") or environ.get("AWS_SECURITY_TOKEN")
    if token:
        lines.append(f"aws_session_token = {token}")
    lines += [f"{k} = {_ini_value(v)}" for k, v in settings.items()]
    return "\n".join(lines) + "\n"


def _check_value(name: str, value: str) -> None:
    if "\n" in value or "\r" in value:
        raise ValueError(
            f"environment variable {name} holds a line break: a credential is one line; "
            "set it again without one"
        )


def hide_secrets() -> HiddenCredentials | None:
    """Move secret AWS variables into a private credentials file; None when there are none."""
    environ = os.environ
    if not any(environ.get(name) for name in SECRET_VARIABLES):
        return None
    for name in MOVED_VARIABLES:
        if name in environ:
            _check_value(name, environ[name])
    base = _private_base()
    _sweep_stale(base)
    folder = tempfile.mkdtemp(prefix=f"{DIR_PREFIX}{os.getpid()}-", dir=base)  # mode 0700
    path = os.path.join(folder, CREDENTIALS_FILE)
    text = _profile_text(environ, _profile_settings())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    atexit.register(shutil.rmtree, folder, True)
    previous = {name: environ.get(name) for name in (*MOVED_VARIABLES, *POINTER_VARIABLES)}
    for name in MOVED_VARIABLES:
        environ.pop(name, None)
    environ["AWS_SHARED_CREDENTIALS_FILE"] = path
    environ["AWS_PROFILE"] = PROFILE
    return HiddenCredentials(path=path, profile=PROFILE, previous=previous)


def restore_secrets(hidden: HiddenCredentials) -> None:
    """Put the environment back as it was and delete the credentials file."""
    for name, value in hidden.previous.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    with contextlib.suppress(OSError):
        shutil.rmtree(os.path.dirname(hidden.path))
