"""Settings resolution (defaults < file < UNETKIT_SERVE_* < flags) and the `unetkit serve` command."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from unetkit.config import ServeConfig
from unetkit.errors import ConfigError
from unetkit.serve.server import env_values, load_serve_config


def test_file_then_environment_then_flags(tmp_path):
    yaml_file = tmp_path / "serve.yaml"
    yaml_file.write_text("serve:\n  port: 9000\n  max_batch_size: 4\n  shadow: true\n  canary_artifact: c.unetkit\n")
    env = {"UNETKIT_SERVE_PORT": "9100", "UNETKIT_SERVE_MAX_WAIT_MS": "2.5", "UNETKIT_SERVE_SHADOW": "false", "HOME": "/x"}
    cfg = load_serve_config(yaml_file, env=env, port=9200, host=None, artifact="m.unetkit")
    assert (cfg.port, cfg.max_batch_size, cfg.max_wait_ms, cfg.shadow) == (9200, 4, 2.5, False)
    assert cfg.artifact == "m.unetkit" and cfg.host == ServeConfig().host and cfg.canary_artifact == "c.unetkit"
    json_file = tmp_path / "serve.json"
    json_file.write_text(json.dumps({"token_file": "/run/token", "sample_rate": 0.5}))
    cfg = load_serve_config(json_file, env={})
    assert cfg.token_file == "/run/token" and cfg.sample_rate == 0.5


def test_bad_settings_name_the_culprit(tmp_path):
    with pytest.raises(ConfigError, match="UNETKIT_SERVE_PROT: unknown setting"):
        env_values({"UNETKIT_SERVE_PROT": "1"})
    with pytest.raises(ConfigError, match="UNETKIT_SERVE_SHADOW='maybe': expected true or false"):
        env_values({"UNETKIT_SERVE_SHADOW": "maybe"})
    with pytest.raises(ConfigError, match="UNETKIT_SERVE_PORT='http': expected an integer"):
        env_values({"UNETKIT_SERVE_PORT": "http"})
    bad = tmp_path / "serve.json"
    bad.write_text('{"max_batch": 3}')
    with pytest.raises(ConfigError, match="unknown key 'max_batch'"):
        load_serve_config(bad, env={})
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_serve_config(bad, env={})
    with pytest.raises(ConfigError, match="serve.backend: expected one of"):
        load_serve_config(None, env={"UNETKIT_SERVE_BACKEND": "tpu"})


def test_cli_reports_a_missing_artifact_in_one_line(tmp_path):
    missing = tmp_path / "nope.unetkit"
    done = subprocess.run([sys.executable, "-m", "unetkit", "serve", str(missing)], capture_output=True, text=True,
                          timeout=60, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert done.returncode == 2
    assert done.stderr.strip() == f"error: {missing}: model artifact not found"
