"""Issue 16: cluster files that passed the lint on main, and files that crashed it, case by case."""
import re

import pytest
import yaml
from test_clusters import ROOT, load, problems_of

from raysweep import clusters


def gcp_with_rule(**rule):
    config, text = load("gcp.yaml")
    base = {"name": "extra", "network": "projects/p/global/networks/raysweep-net",
            "allowed": [{"IPProtocol": "all"}]}
    config["metadata"]["raysweep"]["firewall"].append(base | rule)
    return config, text


def aws_with(**changes):
    config, text = load("aws.yaml")
    for key, value in changes.items():
        config[key] = value
    return config, text


HEAD = "head_start_ray_commands"
WORKER = "worker_start_ray_commands"
GOOD_HEAD = "RAY_AUTH_MODE=token ray start --head --port=6379 --dashboard-host=127.0.0.1"

CASES = {
    "gcp rule with lowercase ingress, open to the world": (
        lambda: gcp_with_rule(direction="ingress", sourceRanges=["0.0.0.0/0"]), r"open to 0\.0\.0\.0/0"),
    "gcp EGRESS rule the firewall command would create as ingress": (
        lambda: gcp_with_rule(direction="EGRESS", destinationRanges=["0.0.0.0/0"]), r"'extra' is EGRESS"),
    "gcp rule with an unknown direction": (
        lambda: gcp_with_rule(direction="inbound", sourceRanges=["10.0.0.0/8"]), r"direction 'inbound'"),
    "gcp rule without sourceRanges (gcloud defaults to the world)": (
        lambda: gcp_with_rule(), r"no sourceRanges or sourceTags; GCP then admits 0\.0\.0\.0/0"),
    "auth mode set for another command": (
        lambda: aws_with(**{HEAD: ["RAY_AUTH_MODE=token true; ray start --head --dashboard-host=127.0.0.1"]}),
        r"head_start_ray_commands.*this `ray start` gets RAY_AUTH_MODE=None"),
    "auth mode exported and then overridden": (
        lambda: aws_with(**{WORKER: ["export RAY_AUTH_MODE=token; RAY_AUTH_MODE=disabled ray start --address=h:6379"]}),
        r"worker_start_ray_commands.*gets RAY_AUTH_MODE='disabled'"),
    "a second --dashboard-host": (
        lambda: aws_with(**{HEAD: [GOOD_HEAD + " --dashboard-host=::"]}), r"got \['127\.0\.0\.1', '::'\]"),
    "dashboard host as a separate word": (
        lambda: aws_with(**{HEAD: ["RAY_AUTH_MODE=token ray start --head --dashboard-host 0.0.0.0"]}),
        r"0\.0\.0\.0 appears"),
    "docker publishes the dashboard port": (
        lambda: aws_with(docker={"image": "rayproject/ray", "container_name": "r", "run_options": ["-p 8265:8265"]}),
        r"docker.run_options: `-p 8265:8265` publishes a port on every interface"),
    "docker --publish= form": (
        lambda: aws_with(docker={"image": "x", "container_name": "r", "run_options": ["--publish=0.0.0.0:6379:6379"]}),
        r"publishes a port on every interface"),
    "ray start written into a script during setup": (
        lambda: (lambda c: (c[0] | {"setup_commands": c[0]["setup_commands"] + ["echo 'ray start --head' > ~/s.sh"],
                                    HEAD: ["bash ~/s.sh"]}, c[1]))(load("aws.yaml")),
        r"`ray start` appears outside the start commands"),
    "start command that runs a script": (
        lambda: aws_with(**{HEAD: [GOOD_HEAD, "bash ~/start.sh"]}), r"runs a script or program the lint cannot check"),
    "ssh open to the world in two halves": (
        lambda: gcp_with_rule(sourceRanges=["0.0.0.0/1", "128.0.0.0/1"],
                              allowed=[{"IPProtocol": "tcp", "ports": ["22"]}]),
        r"open to 0\.0\.0\.0/1, a public range broader than /16"),
    "ipv6 world in halves on aws": (
        lambda: (lambda c: (c[0]["metadata"]["raysweep"]["security_group"]["IpPermissions"].append(
            {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22,
             "Ipv6Ranges": [{"CidrIpv6": "::/1"}]}) or c))(load("aws.yaml")),
        r"open to ::/1, a public range"),
    "a token in a git URL": (
        lambda: (lambda c: (c[0], c[1] + "\n# pip install git+https://user:ghp_abc123@github.com/o/r\n"))(load("aws.yaml")),
        r"looks like a credential in a URL"),
    "idle timeout of infinity": (lambda: aws_with(idle_timeout_minutes=float("inf")), r"idle_timeout_minutes: inf"),
    "idle timeout true": (lambda: aws_with(idle_timeout_minutes=True), r"idle_timeout_minutes: True"),
    "max_workers true": (lambda: aws_with(max_workers=True), r"max_workers: True"),
    "ports as one comma-separated string, open to the world": (
        lambda: gcp_with_rule(sourceRanges=["0.0.0.0/0"], allowed=[{"IPProtocol": "tcp", "ports": ["8265,6379"]}]),
        r"Ray port 8265 .* open to 0\.0\.0\.0/0"),
    "a port that is not a port": (
        lambda: gcp_with_rule(sourceRanges=["10.0.0.0/8"], allowed=[{"IPProtocol": "tcp", "ports": ["http"]}]),
        r"cannot read the rules: port 'http' is not a port"),
    "an unparseable start command": (
        lambda: aws_with(**{HEAD: ["RAY_AUTH_MODE=token ray start --head 'unclosed"]}),
        r"cannot parse .* as a shell command"),
    "firewall is not a list": (
        lambda: (lambda c: (c[0]["metadata"]["raysweep"].update(firewall={"a": 1}) or c))(load("gcp.yaml")),
        r"expected a list of rules"),
    "a node type that is not a mapping": (
        lambda: (lambda c: (c[0]["available_node_types"].update(broken="oops") or c))(load("aws.yaml")),
        r"could not be checked \(AttributeError"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_unsafe_or_malformed_file_is_caught_without_a_crash(case):
    build, pattern = CASES[case]
    config, text = build()
    problems = problems_of(config, text, ray_version="2.60.0")
    assert any(re.search(pattern, p) for p in problems), "\n".join(problems)


@pytest.mark.parametrize("content, pattern", [
    ("", r"the file is empty"),
    ("- a\n- b\n", r"the file is a list, not a mapping"),
    ("a: [unclosed\n", r"cannot read it as YAML"),
    ("provider: 5\n", r"could not be checked|provider.type"),
])
def test_files_that_crashed_the_lint_are_findings(tmp_path, content, pattern):
    path = tmp_path / "c.yaml"
    path.write_text(content)
    problems = clusters.lint_file(path, ray_version="2.60.0")
    assert problems and any(re.search(pattern, p) for p in problems), problems


def test_firewall_refuses_to_print_commands_for_a_file_the_lint_rejects(tmp_path, capsys):
    config, _ = gcp_with_rule()
    path = tmp_path / "gcp.yaml"
    path.write_text(yaml.safe_dump(config))
    assert clusters.main(["firewall", str(path)]) == 1
    captured = capsys.readouterr()
    assert captured.out == "" and "refusing to print firewall commands" in captured.err


def test_the_lint_and_the_store_import_neither_torch_nor_pyro():
    import subprocess
    import sys
    # Loaded as files, without raysweep/__init__ (which imports the experiment machinery, and torch).
    code = ("import sys, importlib.util as u\n"
            "for name in ('clusters', 'store'):\n"
            "    spec = u.spec_from_file_location(name, 'raysweep/' + name + '.py')\n"
            "    spec.loader.exec_module(u.module_from_spec(spec))\n"
            "print(sorted(m for m in ('torch', 'pyro') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    assert out.strip() == "[]"
