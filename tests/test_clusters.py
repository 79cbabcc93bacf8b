"""The `ray up` files in clusters/: Ray's own schema, and raysweep's security lint (and that it bites).

Fast and offline: nothing is launched, no cloud API is called.
"""
import copy
import json
import re
from pathlib import Path

import pytest
import yaml

from raysweep import clusters

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_FILES = sorted((ROOT / "clusters").glob("*.yaml"))
RAY_PORTS = (6379, 8265, 10001)


def load(name: str) -> tuple[dict, str]:
    text = (ROOT / "clusters" / name).read_text()
    return yaml.safe_load(text), text


def problems_of(config: dict, text: str = "", **kw) -> list[str]:
    return clusters.lint_config(config, text, **kw)


def assert_reported(problems: list[str], *patterns: str) -> None:
    """Some single problem matches every pattern."""
    assert any(all(re.search(p, msg) for p in patterns) for msg in problems), (
        f"no problem matching {patterns} in:\n" + "\n".join(problems))


def test_the_three_cluster_files_exist():
    names = {p.name for p in CLUSTER_FILES}
    assert {"aws.yaml", "gcp.yaml", "onprem.yaml"} <= names


# --- Ray's own schema, as `ray up` applies it ---------------------------------------------------

@pytest.mark.parametrize("path", CLUSTER_FILES, ids=lambda p: p.name)
def test_validates_against_rays_cluster_schema(path):
    import jsonschema
    import ray.autoscaler
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load(path.read_text())
    schema_path = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    # The file as written (catches misspelt keys: the schema forbids unknown top-level keys) ...
    jsonschema.validate(config, json.loads(schema_path.read_text()))
    # ... and after Ray merges its provider defaults, as `ray up` does before contacting the cloud.
    validate_config(prepare_config(copy.deepcopy(config)))


# --- the security lint: every file is clean -----------------------------------------------------

@pytest.mark.parametrize("path", CLUSTER_FILES, ids=lambda p: p.name)
def test_every_cluster_file_passes_the_security_lint(path):
    # Parametrised over the glob: a new clusters/*.yaml is linted without anyone adding it here,
    # and a new provider type fails until raysweep/clusters.py has rules for it.
    assert clusters.lint_file(path) == []


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=lambda p: p.name)
def test_ray_pin_equals_installed_ray(path):
    import ray
    text = path.read_text()
    pins = set(re.findall(r"ray\[[^\]]*\]==([0-9.]+)", text))
    assert pins == {ray.__version__}


def test_lint_rejects_an_unknown_provider_type():
    config, text = load("aws.yaml")
    config["provider"] = {"type": "azure", "location": "westus2"}
    assert_reported(problems_of(config, text), r"'azure' has no security rules", r"raysweep/clusters\.py")


# --- the lint can fail: deliberately insecure copies -------------------------------------------

def test_lint_reports_dashboard_open_to_the_world_with_port_and_cidr():
    config, text = load("aws.yaml")
    rules = config["metadata"]["raysweep"]["security_group"]["IpPermissions"]
    rules.append({"IpProtocol": "tcp", "FromPort": 8265, "ToPort": 8265, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]})
    problems = problems_of(config, text)
    assert_reported(problems, r"\b8265\b", r"0\.0\.0\.0/0")


@pytest.mark.parametrize("port", RAY_PORTS)
def test_lint_reports_a_port_range_covering_a_ray_port_open_over_ipv6(port):
    config, text = load("aws.yaml")
    config["metadata"]["raysweep"]["security_group"]["IpPermissions"].append(
        {"IpProtocol": "tcp", "FromPort": 1024, "ToPort": 65535, "Ipv6Ranges": [{"CidrIpv6": "::/0"}]})
    assert_reported(problems_of(config, text), rf"\b{port}\b", r"::/0")


def test_lint_reports_all_protocols_open_to_the_world():
    config, text = load("aws.yaml")
    config["metadata"]["raysweep"]["security_group"]["IpPermissions"].append(
        {"IpProtocol": "-1", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]})
    problems = problems_of(config, text)
    for port in RAY_PORTS:
        assert_reported(problems, rf"\b{port}\b", r"0\.0\.0\.0/0")


def test_lint_reports_a_ray_port_open_to_a_public_range():
    config, text = load("aws.yaml")
    config["metadata"]["raysweep"]["security_group"]["IpPermissions"].append(
        {"IpProtocol": "tcp", "FromPort": 10001, "ToPort": 10001, "IpRanges": [{"CidrIp": "8.8.8.0/24"}]})
    assert_reported(problems_of(config, text), r"\b10001\b", r"8\.8\.8\.0/24")


def test_lint_reports_ssh_open_to_the_world_and_missing_ssh():
    config, text = load("aws.yaml")
    ssh = config["metadata"]["raysweep"]["security_group"]["IpPermissions"][0]
    ssh["IpRanges"] = [{"CidrIp": "0.0.0.0/0"}]
    assert_reported(problems_of(config, text), r"22-22", r"0\.0\.0\.0/0")
    config["metadata"]["raysweep"]["security_group"]["IpPermissions"].pop(0)
    assert_reported(problems_of(config, text), r"no SSH")


def test_lint_reports_rays_self_made_security_group():
    # Ray adds SSH from 0.0.0.0/0 to any group it creates; the file must name its own group.
    config, text = load("aws.yaml")
    config["provider"]["security_group"] = {"GroupName": "ray", "IpPermissions": [
        {"IpProtocol": "tcp", "FromPort": 8265, "ToPort": 8265, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}]}
    for node_type in config["available_node_types"].values():
        del node_type["node_config"]["SecurityGroupIds"]
    problems = problems_of(config, text)
    assert_reported(problems, r"provider\.security_group", r"SSH", r"0\.0\.0\.0/0")
    assert_reported(problems, r"provider\.security_group", r"8265", r"0\.0\.0\.0/0")
    assert_reported(problems, r"gpu_a10g_1x", r"no SecurityGroupIds")


def test_lint_reports_gcp_firewall_open_to_the_world_and_default_network():
    config, text = load("gcp.yaml")
    config["metadata"]["raysweep"]["firewall"].append({
        "name": "oops", "network": "global/networks/raysweep-net", "sourceRanges": ["0.0.0.0/0"],
        "allowed": [{"IPProtocol": "tcp", "ports": ["6000-9000"]}]})
    config["available_node_types"]["gpu_l4_1x"]["node_config"]["networkInterfaces"] = [
        {"network": "global/networks/default"}]
    del config["available_node_types"]["head"]["node_config"]["networkInterfaces"]
    problems = problems_of(config, text)
    assert_reported(problems, r"\b6379\b", r"0\.0\.0\.0/0")
    assert_reported(problems, r"\b8265\b", r"0\.0\.0\.0/0")
    assert_reported(problems, r"gpu_l4_1x", r"`default` network")
    assert_reported(problems, r"head", r"set networkInterfaces")


def test_lint_reports_onprem_hosts_open_to_the_world():
    config, text = load("onprem.yaml")
    config["metadata"]["raysweep"]["firewall"][1]["sourceRanges"] = ["0.0.0.0/0"]
    problems = problems_of(config, text)
    for port in RAY_PORTS:
        assert_reported(problems, rf"\b{port}\b", r"0\.0\.0\.0/0")


def test_lint_reports_unbounded_size_and_no_idle_timeout():
    config, text = load("aws.yaml")
    config["max_workers"] = 1000
    del config["idle_timeout_minutes"]
    del config["available_node_types"]["gpu_h100_8x"]["max_workers"]
    problems = problems_of(config, text)
    assert_reported(problems, r"max_workers: 1000", rf"0 to {clusters.MAX_WORKERS_LIMIT}")
    assert_reported(problems, r"idle_timeout_minutes: None")
    assert_reported(problems, r"gpu_h100_8x\.max_workers: None")


def test_lint_reports_unpinned_or_mismatched_versions_and_install_order():
    config, text = load("aws.yaml")
    assert_reported(problems_of(config, text, ray_version="2.59.0"), r"\['2\.60\.0'\]", r"2\.59\.0")
    config["setup_commands"] = [c for c in config["setup_commands"] if "torch==" not in c]
    config["setup_commands"].append('pip install "torch==2.13.0"')
    config["setup_commands"] = [c.replace("==2.60.0", "") for c in config["setup_commands"]]
    config["setup_commands"] = [re.sub(r"@v[0-9.]+", "", c) for c in config["setup_commands"]]
    problems = problems_of(config, text)
    assert_reported(problems, r"Ray is not pinned")
    assert_reported(problems, r"raysweep is not pinned")
    config["setup_commands"] = ["pip install raysweep==0.1.0", 'pip install "torch==2.13.0"',
                                'pip install "ray[default,tune]==2.60.0"']
    assert_reported(problems_of(config, text), r"install torch before raysweep")
    config["setup_commands"] = config["setup_commands"][1:] + ["pip install ./raysweep-0.1.0-py3-none-any.whl"]
    assert not any("torch" in p or "pinned" in p for p in problems_of(config, text))


def test_lint_reports_spot_head_and_on_demand_workers():
    config, text = load("aws.yaml")
    spot = config["available_node_types"]["gpu_l4_1x"]["node_config"].pop("InstanceMarketOptions")
    config["available_node_types"]["head"]["node_config"]["InstanceMarketOptions"] = spot
    problems = problems_of(config, text)
    assert_reported(problems, r"head node: must be on-demand")
    assert_reported(problems, r"gpu_l4_1x: workers must be spot")

    config, text = load("gcp.yaml")
    del config["available_node_types"]["gpu_a100_8x"]["node_config"]["scheduling"]
    config["available_node_types"]["head"]["node_config"]["scheduling"] = {"preemptible": True}
    problems = problems_of(config, text)
    assert_reported(problems, r"head node: must be on-demand")
    assert_reported(problems, r"gpu_a100_8x: workers must be spot")


def test_lint_reports_missing_or_default_identities():
    config, text = load("aws.yaml")
    del config["available_node_types"]["gpu_a10g_1x"]["node_config"]["IamInstanceProfile"]
    assert_reported(problems_of(config, text), r"gpu_a10g_1x", r"IamInstanceProfile")

    config, text = load("gcp.yaml")
    config["available_node_types"]["gpu_l4_1x"]["node_config"]["serviceAccounts"] = [
        {"email": "123-compute@developer.gserviceaccount.com"}]
    del config["available_node_types"]["head"]["node_config"]["serviceAccounts"]
    problems = problems_of(config, text)
    assert_reported(problems, r"gpu_l4_1x", r"Compute Engine default service account")
    assert_reported(problems, r"head", r"set serviceAccounts explicitly")


def test_lint_reports_exposed_dashboard_and_missing_token_auth():
    config, text = load("aws.yaml")
    config["head_start_ray_commands"] = ["ray stop", "ray start --head --port=6379 --dashboard-host=0.0.0.0"]
    config["worker_start_ray_commands"] = ["ray start --address=$RAY_HEAD_IP:6379"]
    config["file_mounts"] = {}
    problems = problems_of(config, text)
    assert_reported(problems, r"dashboard to loopback")
    assert_reported(problems, r"0\.0\.0\.0 appears")
    assert_reported(problems, r"head_start_ray_commands", r"RAY_AUTH_MODE=token")
    assert_reported(problems, r"worker_start_ray_commands", r"RAY_AUTH_MODE=token")
    assert_reported(problems, r"file_mounts", r"auth_token")


@pytest.mark.parametrize("leak, kind", [
    ("# aws_access_key_id: AKIA" + "ABCDEFGHIJKLMNOP", "AWS access key id"),
    ("-----BEGIN OPENSSH " + "PRIVATE KEY-----", "private key"),
    ("aws_secret_" + "access_key = abc", "AWS secret key setting"),
    ("client_secret: " + "x" * 32, "credential-like value"),
    ("export RAY_AUTH_" + "TOKEN=abc", "Ray token value"),
])
def test_lint_reports_strings_that_look_like_secrets(leak, kind):
    config, text = load("aws.yaml")
    problems = problems_of(config, text + "\n" + leak + "\n")
    assert_reported(problems, rf"line {text.count(chr(10)) + 2}: looks like (an? )?{kind}")


# --- the CLI, the firewall commands, the IAM policies ------------------------------------------

def test_cli_lint_exit_codes(tmp_path, capsys):
    assert clusters.main(["lint", *map(str, CLUSTER_FILES)]) == 0
    config, _ = load("onprem.yaml")
    config["metadata"]["raysweep"]["firewall"][0]["sourceRanges"] = ["0.0.0.0/0"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(config))
    assert clusters.main(["lint", str(bad)]) == 1
    assert "bad.yaml: metadata.raysweep.firewall: ports 22-22 (tcp) are open to 0.0.0.0/0" in capsys.readouterr().out


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=lambda p: p.name)
def test_firewall_commands_follow_the_linted_rules(path):
    config, _ = clusters.load(path)
    commands = "\n".join(clusters.firewall_commands(config))
    assert "203.0.113.0/24" in commands  # the SSH CIDR the user sets
    assert "0.0.0.0" not in commands and "::/0" not in commands
    assert re.search(r"--port 22 |port 22\b|tcp:22\b", commands)


def test_iam_policies_are_least_privilege():
    head = json.loads((ROOT / "clusters" / "aws-iam-head-policy.json").read_text())
    worker = json.loads((ROOT / "clusters" / "aws-iam-worker-policy.json").read_text())
    # Workers: objects of one bucket, nothing else.
    for statement in worker["Statement"]:
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        assert all(a.startswith("s3:") and "*" not in a for a in actions)
        assert statement["Resource"] in ("arn:aws:s3:::YOUR-BUCKET", "arn:aws:s3:::YOUR-BUCKET/*")
    # Head: no wildcard actions; may pass only the worker role; S3 only on the same bucket.
    for statement in head["Statement"]:
        actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
        assert not any(a.endswith("*") for a in actions), statement
        if any(a.startswith("s3:") for a in actions):
            assert statement["Resource"].startswith("arn:aws:s3:::YOUR-BUCKET")
        if "iam:PassRole" in actions:
            assert statement["Resource"].endswith(":role/raysweep-worker")
        if "ec2:TerminateInstances" in actions:
            assert statement["Condition"]["StringEquals"]["ec2:ResourceTag/ray-cluster-name"] == "raysweep"
    # The profiles the cluster file names are the two roles the policies are written for.
    config, _ = load("aws.yaml")
    arns = {t["node_config"]["IamInstanceProfile"]["Arn"].rsplit("/", 1)[1]
            for t in config["available_node_types"].values()}
    assert arns == {"raysweep-head", "raysweep-worker"}


def test_installed_ray_has_the_token_auth_the_cluster_files_rely_on():
    # The start commands set RAY_AUTH_MODE=token and ship ~/.ray/auth_token; if a Ray upgrade
    # renames either, this fails before a cluster starts without authentication.
    from ray._private.authentication import authentication_token_setup as setup
    from ray.scripts.scripts import cli

    assert setup.AUTH_MODE_ENV_VAR == "RAY_AUTH_MODE"
    assert setup._get_default_token_path() == Path.home() / ".ray" / "auth_token"
    assert "get-auth-token" in cli.commands
