"""The scale-out deployment files: parseable, one spool volume per sidecar, and configs ``validate`` accepts."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from traceexport.config import validate_config_file

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
ENV = {"TRACEEXPORT_TOKEN": "t" * 24, "TRACEEXPORT_CELERY_BROKER_URL": "redis://redis:6379/1",
       "CELERY_BROKER_URL": "redis://redis:6379/1", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}


def _valid(config_text: str, tmp_path: Path, env: dict[str, str] = ENV) -> list[Any]:
    path = tmp_path / "traceexport.yaml"
    path.write_text(config_text.replace("/var/lib/traceexport/spool", str(tmp_path / "spool")))
    return validate_config_file(path, env=env)


def test_compose_replicas_each_have_their_own_spool_and_share_difys_storage(tmp_path: Path) -> None:
    """Every traceexport-N mounts a spool directory of its own and the same Dify storage; the config validates."""
    compose = yaml.safe_load((DEPLOY / "docker-compose.traceexport-replicas.yaml").read_text())
    single = yaml.safe_load((DEPLOY / "docker-compose.traceexport.yaml").read_text())
    sidecars = {name: s for name, s in compose["services"].items() if name.startswith("traceexport-")}
    assert len(sidecars) == 3
    spools = [next(v for v in s["volumes"] if v.endswith(":/var/lib/traceexport")) for s in sidecars.values()]
    assert len(set(spools)) == 3
    assert all("./volumes/app/storage:/app/api/storage" in s["volumes"] for s in sidecars.values())
    assert compose["services"]["worker"] == single["services"]["worker"]
    text = compose["configs"]["traceexport_config"]["content"].replace("$$", "$")
    assert _valid(text, tmp_path, {**ENV, "TRACEEXPORT_TO": "otlp"}) == []  # the token and sinks as serve gets them


def test_the_compose_files_config_validates_with_the_environment_compose_gives_it(tmp_path: Path) -> None:
    """The sidecar's config, as compose mounts it, passes `validate --config` with the environment compose
    sets (token in TRACEEXPORT_TOKEN, sinks from TRACEEXPORT_TO), as serve takes it; without the token it does not."""
    compose = yaml.safe_load((DEPLOY / "docker-compose.traceexport.yaml").read_text())
    environment = compose["services"]["traceexport"]["environment"]
    assert {"TRACEEXPORT_TOKEN", "TRACEEXPORT_TO", "TRACEEXPORT_CELERY_BROKER_URL"} <= set(environment)
    text = compose["configs"]["traceexport_config"]["content"].replace("$$", "$")
    env = {**ENV, "TRACEEXPORT_TO": "otlp", "REDIS_KEY_PREFIX": ""}
    assert _valid(text, tmp_path, env) == []
    problems = [str(p) for p in _valid(text, tmp_path, {k: v for k, v in env.items() if k != "TRACEEXPORT_TOKEN"})]
    assert problems == ["sources.http.token: a token is required to listen on 0.0.0.0:4319 (beyond loopback): "
                        "set --token / TRACEEXPORT_TOKEN, or listen on 127.0.0.1 (line 5)"]


def test_the_statefulset_claims_one_spool_volume_per_replica(tmp_path: Path) -> None:
    """The StatefulSet mounts a volumeClaimTemplate at the spool, Dify's storage from one shared claim."""
    docs = {d["kind"]: d for d in yaml.safe_load_all((DEPLOY / "kubernetes" / "traceexport-statefulset.yaml")
                                                      .read_text())}
    spec = docs["StatefulSet"]["spec"]
    assert [t["metadata"]["name"] for t in spec["volumeClaimTemplates"]] == ["spool"]
    mounts = {m["name"]: m["mountPath"] for m in spec["template"]["spec"]["containers"][0]["volumeMounts"]}
    assert mounts["spool"] == "/var/lib/traceexport" and mounts["dify-storage"] == "/app/api/storage"
    config = docs["ConfigMap"]["data"]["traceexport.yaml"]
    assert "dir: /var/lib/traceexport/spool" in config and _valid(config, tmp_path) == []


def _difys_uid() -> int:
    """The uid Dify's api and worker images run as (`ARG dify_uid` in Dify's own api/Dockerfile), or skip."""
    dockerfile = DEPLOY.parent.parent / "shared" / "dify" / "real" / "dify-1.14.1" / "api" / "Dockerfile"
    if not dockerfile.is_file():
        pytest.skip(f"no Dify source at {dockerfile.parent} (../shared/dify/real is absent in a plain clone)")
    match = re.search(r"^ARG dify_uid=(\d+)$", dockerfile.read_text(), re.M)
    assert match, "Dify's api/Dockerfile no longer says its uid"
    return int(match.group(1))


@pytest.mark.parametrize("name", ["docker-compose.traceexport.yaml", "docker-compose.traceexport-replicas.yaml"])
def test_sidecars_run_as_difys_user_and_own_their_spools(name: str) -> None:
    """The sidecars run as the uid Dify's api and worker write their trace files with (so they may delete them),
    and wait for a one-shot service that gives that uid the spool directories Docker creates owned by root."""
    uid = _difys_uid()
    compose = yaml.safe_load((DEPLOY / name).read_text())
    services = compose["services"]
    init = services["init_traceexport"]
    sidecars = {n: s for n, s in services.items() if n == "traceexport" or n.startswith("traceexport-")}
    assert sidecars
    for sidecar in sidecars.values():
        assert sidecar["user"] == f"{uid}:{uid}"
        assert sidecar["depends_on"]["init_traceexport"] == {"condition": "service_completed_successfully"}
        spool = next(v.split(":")[0] for v in sidecar["volumes"] if v.endswith(":/var/lib/traceexport"))
        mounted = {v.split(":")[0]: v.split(":")[1] for v in init["volumes"]}
        assert mounted[spool] in init["command"] and init["command"][:2] == ["chown", f"{uid}:{uid}"]
    statefulset = next(d for d in yaml.safe_load_all((DEPLOY / "kubernetes" / "traceexport-statefulset.yaml")
                                                     .read_text()) if d["kind"] == "StatefulSet")
    context = statefulset["spec"]["template"]["spec"]["securityContext"]
    assert context == {"runAsUser": uid, "runAsGroup": uid, "fsGroup": uid}
