"""The deployment files of contrib/compose (two instances, Redis, PostgreSQL, HAProxy): what they
name exists, the llmgw config they mount loads with the environment they pass, and the balancer's
health check is the daemon's readiness route. (No Docker engine runs here: the files are checked,
not started.)"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

from llmgw import config

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "contrib" / "compose"


def _env() -> dict[str, str]:
    out = {}
    for line in (COMPOSE / "env.example").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            k, _, v = line.partition("=")
            out[k] = v
    return out


def test_compose_services_and_build() -> None:
    doc = yaml.safe_load((COMPOSE / "docker-compose.yml").read_text())
    services = doc["services"]
    assert set(services) == {"llmgw-a", "llmgw-b", "balancer", "redis", "postgres"}
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    dockerfile = (ROOT / "Dockerfile").read_text()
    for name in ("llmgw-a", "llmgw-b"):
        s = services[name]
        assert (COMPOSE / s["build"]["context"] / "Dockerfile").resolve() == ROOT / "Dockerfile"
        assert "ARG EXTRAS" in dockerfile
        for extra in s["build"]["args"]["EXTRAS"].split(","):
            assert extra in extras, extra  # the image gets the Redis and PostgreSQL drivers
        assert s["env_file"] == ".env" and s["environment"]["LLMGW_CONFIG"] == "/etc/llmgw/llmgw.toml"
        assert "./llmgw.toml:/etc/llmgw/llmgw.toml:ro" in s["volumes"]
        assert {"redis", "postgres"} <= set(s["depends_on"])
        assert int(s["stop_grace_period"].rstrip("s")) > config.ServerConfig().drain_timeout
    # each instance keeps its own home (its response cache); no two share a volume
    homes = [v for n in ("llmgw-a", "llmgw-b") for v in services[n]["volumes"] if v.endswith(":/var/lib/llmgw")]
    assert len(set(homes)) == 2


def test_the_mounted_config_loads_with_the_compose_environment() -> None:
    env = _env()
    cfg = config.load(COMPOSE / "llmgw.toml", environ=env)
    assert cfg.cluster.redis_url == env["LLMGW_REDIS_URL"]
    assert cfg.store.url == env["LLMGW_STORE_URL"]
    assert cfg.server.host == "0.0.0.0" and cfg.server.port == 8080
    # the passwords in the URLs are the ones the Redis and PostgreSQL services are started with
    assert f":{env['REDIS_PASSWORD']}@redis:" in env["LLMGW_REDIS_URL"]
    assert f":{env['POSTGRES_PASSWORD']}@postgres:" in env["LLMGW_STORE_URL"]


def test_the_balancer_checks_readiness_on_every_instance() -> None:
    cfg = (COMPOSE / "haproxy.cfg").read_text()
    assert re.search(r"option httpchk GET /readyz", cfg)
    assert set(re.findall(r"server \w+ (llmgw-[ab]):8080 check", cfg)) == {"llmgw-a", "llmgw-b"}
    timeout = int(re.search(r"timeout server (\d+)s", cfg).group(1))
    assert timeout > config.ServerConfig().request_timeout  # a long stream is not cut by the balancer
