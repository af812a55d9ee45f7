"""Running the server: settings from defaults < config file < UNETKIT_SERVE_* variables < flags.

`serve_command(...)` is what `unetkit serve` calls; `run_server(config)` runs uvicorn until SIGTERM/
SIGINT, then stops accepting connections, lets in-flight requests finish (`drain_seconds`) and
drains the batching queues.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from unetkit.config import SERVE_ENV_PREFIX, ServeConfig, from_dict
from unetkit.errors import ConfigError
from unetkit.signing import TrustPolicy  # no torch: safe before the OpenMP policy is set

_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off", ""}


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A JSON or YAML mapping of ServeConfig keys (a top-level `serve:` section is accepted too)."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ConfigError(f"{p}: cannot read the serve config ({e.strerror})") from None
    if p.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{p}: not valid JSON ({e.msg} at line {e.lineno})") from None
    if isinstance(data, dict) and set(data) == {"serve"}:
        data = data["serve"]
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping of serve settings, got {type(data).__name__}")
    return data


def env_values(env: Mapping[str, str]) -> dict[str, Any]:
    """UNETKIT_SERVE_<FIELD> variables, converted to the field's type."""
    hints = typing.get_type_hints(ServeConfig)
    names = {f.name for f in dataclasses.fields(ServeConfig)}
    values: dict[str, Any] = {}
    for key, raw in env.items():
        if not key.startswith(SERVE_ENV_PREFIX):
            continue
        name = key[len(SERVE_ENV_PREFIX):].lower()
        if name not in names:
            raise ConfigError(f"{key}: unknown setting; expected UNETKIT_SERVE_ + one of {sorted(n.upper() for n in names)}")
        tp = hints[name]
        try:
            if tp is bool:
                if raw.strip().lower() not in _TRUE | _FALSE:
                    raise ValueError
                values[name] = raw.strip().lower() in _TRUE
            elif tp is int:
                values[name] = int(raw)
            elif tp is float:
                values[name] = float(raw)
            else:
                values[name] = raw
        except ValueError:
            expected = {bool: "true or false (also 1/0, yes/no, on/off)", int: "an integer", float: "a number"}[tp]
            raise ConfigError(f"{key}={raw!r}: expected {expected}") from None
    return values


def load_serve_config(config_file: str | Path | None = None, env: Mapping[str, str] | None = None,
                      **flags: Any) -> ServeConfig:
    """Defaults, then the file, then the environment, then flags that were given (not None)."""
    values: dict[str, Any] = {}
    if config_file:
        values.update(read_config_file(config_file))
    values.update(env_values(os.environ if env is None else env))
    values.update({k: v for k, v in flags.items() if v is not None})
    return from_dict(ServeConfig, values, "serve")


def run_server(config: ServeConfig) -> None:
    """Serve until interrupted. Checks the artifacts' metadata (or the registry's stage) first, so a wrong
    path fails fast."""
    prefer_passive_openmp()
    check_before_start(config)
    try:
        import uvicorn
    except ImportError:  # pragma: no cover - depends on the environment
        raise ConfigError("unetkit serve needs the web extra: pip install 'unetkit[serve]'") from None
    from unetkit.serve.app import create_app  # lazy: as read_meta above; fastapi checked first
    from unetkit.serve.connections import (  # lazy: imports uvicorn, checked above
        DrainingServer,
        guarded_protocol,
    )

    limit_malloc_arenas()
    app = create_app(config)
    settings = uvicorn.Config(
        app, host=config.host, port=config.port, log_config=None, access_log=False, workers=1,
        timeout_graceful_shutdown=int(config.drain_seconds), server_header=False,
        http=guarded_protocol(config), limit_concurrency=config.max_connections,
        timeout_keep_alive=config.keepalive_timeout_seconds, h11_max_incomplete_event_size=config.max_header_bytes,
    )
    DrainingServer(settings, app.state.unetkit).run()


def check_before_start(config: ServeConfig) -> None:
    """Fail fast, before the server listens: the artifact (or the registry stage's version) exists and is
    intact; with `sha256`, `trusted_keys` or `require_signature`, it is fully verified (pin, hashes,
    signature), so a server never starts on an unsigned, untrusted or swapped model."""
    # lazy: torch loads here, after the OpenMP policy is set
    from unetkit.artifact import load_artifact, read_meta
    from unetkit.export.deployed import is_exported, load_model  # lazy: as read_meta above

    trust = TrustPolicy.load(config.trusted_keys, config.require_signature)
    if config.registry and not config.artifact:
        if config.sha256:
            raise ConfigError("serve: sha256 pins an artifact file; a registry version is already pinned by its "
                              "registered sha256 (drop --sha256, or serve the file itself)")
        from unetkit.registry.registry import Registry  # lazy: as read_meta above

        with Registry.open(config.registry, read_only=True) as registry:  # the stage holds a version and its blob is intact
            record = registry.resolve(config.stage, config.model_name or None)
            if trust:
                registry.load(record, trust)
            else:
                registry.fetch(record)
    for path, pin in ((config.artifact, config.sha256), (config.canary_artifact, "")):
        if not path:  # no artifact and no registry: create_app says so
            continue
        if is_exported(path):  # an exported model and its plan: opened (and refused with a pin or trust) as serving will
            load_model(path, sha256=pin or None, trust=trust)
        elif trust or pin:
            load_artifact(path, sha256=pin or None, trust=trust)
        else:
            read_meta(path)


def prefer_passive_openmp() -> None:
    """OMP_WAIT_POLICY=PASSIVE unless set: must run before torch is imported.

    With the default (spinning) policy, torch's OpenMP threads and the server's request threads
    fight for the same cores: measured on 2 cores, a 300x200 request took 70-150 ms (and 0.2-3 s
    with ACTIVE) instead of a steady 41 ms with PASSIVE."""
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def limit_malloc_arenas(arenas: int = 1) -> bool:
    """One glibc malloc arena for the whole process (unless MALLOC_ARENA_MAX is set); call before
    threads start. False where it is not glibc.

    The predictor keeps freed memory and never mmaps (`backends.keep_freed_memory`), so a thread
    arena is a set of 64 MiB heaps: the batcher thread's large activations fit badly there (an
    eager forward of 8 256x256 tiles took 280 ms in a worker thread vs 215 ms in the main arena),
    and each request thread's arena keeps its own high-water mark. Measured on 2 cores with 32
    clients sending 1024x1024 images: 70-76% of offline throughput with per-thread arenas or 2
    arenas, 97% with one; RSS flat."""
    if "MALLOC_ARENA_MAX" in os.environ:
        return False
    import ctypes

    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(-8, arenas))  # M_ARENA_MAX
    except (OSError, AttributeError):
        return False


def serve_command(artifact: str | None = None, config_file: str | Path | None = None, **flags: Any) -> None:
    """`unetkit serve ARTIFACT [--host --port ...]`: resolve the settings and run."""
    run_server(load_serve_config(config_file, artifact=artifact, **flags))
