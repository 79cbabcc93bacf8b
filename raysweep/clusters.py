"""Security lint for the `ray up` cluster files in clusters/, and the firewall commands they need.

    python -m raysweep.clusters lint clusters/*.yaml        # exit 1 and one line per problem
    python -m raysweep.clusters firewall clusters/aws.yaml   # print the commands that create the
                                                             # security group / firewall rules

Why a lint: anyone who reaches Ray's dashboard/jobs port (8265), its GCS (6379) or the Ray client
port (10001) can run code on the cluster (the "ShadowRay" attacks used exactly that). Ray's own
AWS launcher, when it creates a security group, always adds SSH from 0.0.0.0/0
(ray/autoscaler/_private/aws/config.py, _create_default_ssh_inbound_rules), and a GCP node left
to the launcher lands on a project subnet that may be the `default` network (SSH open to the
world). So the cluster files here name their own security group / network, and keep the ingress
rules those must carry under `metadata.raysweep` (a field Ray does not interpret); this module
checks them and turns them into `aws ec2` / `gcloud` / `ufw` commands.

No `ray` import here: the lint runs anywhere PyYAML does. The installed Ray version, which the
setup commands must pin, is read from package metadata.
"""
from __future__ import annotations

import argparse
import ipaddress
import re
import sys
from pathlib import Path

RAY_PORTS = {6379: "GCS", 8265: "dashboard / jobs API", 10001: "Ray client"}
SSH_PORT = 22
MAX_WORKERS_LIMIT = 16  # a typo in max_workers must not be able to start a hundred GPU nodes
PROVIDERS = ("aws", "gcp", "local")

# Patterns that look like credentials. Words such as "secret" in prose are fine; values are not.
SECRET_PATTERNS = {
    "an AWS access key id": re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
    "a private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "an AWS secret key setting": re.compile(r"(?i)aws_secret_access_key|aws_session_token"),
    "a Ray token value": re.compile(r"RAY_AUTH_TOKEN\s*="),
    "a credential-like value": re.compile(
        r"(?i)\b\w*(secret|password|passwd|api_?key|token)\w*\s*[:=]\s*['\"]?[A-Za-z0-9/+_\-]{20,}"),
    "a GCP service-account key": re.compile(r'"private_key_id"|"type"\s*:\s*"service_account"'),
}


def installed_ray_version() -> str | None:
    from importlib import metadata
    try:
        return metadata.version("ray")
    except metadata.PackageNotFoundError:
        return None


# ---------------------------------------------------------------------------------------------
# Ingress rules, normalised to (protocol, first port, last port, sources)

def _aws_rules(ip_permissions: list) -> list[tuple[str, int, int, list[str]]]:
    """EC2 IpPermissions -> normalised rules. Protocol "-1" (or a missing port) means all ports."""
    rules = []
    for perm in ip_permissions or []:
        proto = str(perm.get("IpProtocol", "-1"))
        lo, hi = perm.get("FromPort", -1), perm.get("ToPort", -1)
        if proto == "-1" or lo in (-1, None):
            lo, hi = 0, 65535
        sources = [r.get("CidrIp", "") for r in perm.get("IpRanges", [])]
        sources += [r.get("CidrIpv6", "") for r in perm.get("Ipv6Ranges", [])]
        sources += ["group:" + str(p.get("GroupId") or p.get("GroupName")) for p in perm.get("UserIdGroupPairs", [])]
        sources += ["prefix-list:" + str(p.get("PrefixListId")) for p in perm.get("PrefixListIds", [])]
        rules.append((proto, int(lo), int(hi), sources))
    return rules


def _firewall_rules(firewall: list) -> list[tuple[str, int, int, list[str]]]:
    """GCP firewall resources (also used for on-premise hosts) -> normalised rules."""
    rules = []
    for fw in firewall or []:
        if fw.get("direction", "INGRESS") != "INGRESS":
            continue
        sources = list(fw.get("sourceRanges", [])) + ["tag:" + t for t in fw.get("sourceTags", [])]
        for allowed in fw.get("allowed", []):
            proto = str(allowed.get("IPProtocol", "all"))
            ports = allowed.get("ports") or ["0-65535"]
            for spec in ports:
                lo, _, hi = str(spec).partition("-")
                rules.append((proto, int(lo), int(hi or lo), sources))
    return rules


def _network(source: str):
    try:
        return ipaddress.ip_network(source, strict=False)
    except ValueError:
        return None  # a group, tag or prefix list: traffic from the cluster's own nodes


def lint_ingress(rules, where: str) -> list[str]:
    """Problems with a set of normalised ingress rules: world-open ports, public Ray ports, open SSH."""
    problems = []
    ssh_sources = []
    for proto, lo, hi, sources in rules:
        for source in sources:
            net = _network(source)
            if net is None:
                continue
            covered = [p for p in RAY_PORTS if lo <= p <= hi]
            if lo <= SSH_PORT <= hi:
                ssh_sources.append(source)
            for port in covered:
                if net.prefixlen == 0 or not net.is_private:
                    problems.append(
                        f"{where}: Ray port {port} ({RAY_PORTS[port]}) is open to {source} "
                        f"(rule {proto} {lo}-{hi}); allow Ray's ports only between cluster nodes "
                        f"and reach the dashboard with `ray dashboard <cluster.yaml>`")
            if net.prefixlen == 0 and not covered:
                problems.append(f"{where}: ports {lo}-{hi} ({proto}) are open to {source}; "
                                f"restrict the rule to the CIDR of your own network")
    if not ssh_sources:
        problems.append(f"{where}: no SSH (port 22) rule from your network; `ray up` needs one")
    return problems


# ---------------------------------------------------------------------------------------------
# The lint

def _commands(config: dict, *keys: str) -> str:
    out = []
    for key in keys:
        out += [str(c) for c in config.get(key) or []]
    for node_type in (config.get("available_node_types") or {}).values():
        for key in keys:
            out += [str(c) for c in node_type.get(key) or []]
    return "\n".join(out)


def _check_versions(config: dict, ray_version: str | None) -> list[str]:
    problems = []
    setup = _commands(config, "setup_commands", "head_setup_commands", "worker_setup_commands")
    pins = re.findall(r"\bray(?:\[[^\]]*\])?==([0-9][0-9A-Za-z.\-+]*)", setup)
    if not pins:
        problems.append("setup_commands: Ray is not pinned; install `ray[default,tune]==<version>`")
    elif ray_version and any(pin != ray_version for pin in pins):
        problems.append(f"setup_commands: Ray is pinned to {sorted(set(pins))} but the installed "
                        f"Ray (which `ray up` runs) is {ray_version}; they must match")
    raysweep_pin = re.search(r"raysweep(==\S+|\s*@\s*git\+\S+@\S+|-[0-9][^\s]*\.whl)", setup)
    if not raysweep_pin:
        problems.append("setup_commands: raysweep is not pinned; install a tagged git URL "
                        "(`raysweep @ git+https://...@vX.Y.Z`), `raysweep==X.Y.Z` or a wheel")
    torch_at = re.search(r"\btorch==", setup)
    if not torch_at:
        problems.append("setup_commands: torch is not pinned (`torch==X.Y.Z`)")
    elif raysweep_pin and torch_at.start() > raysweep_pin.start():
        problems.append("setup_commands: install torch before raysweep, so pip does not pick a torch build")
    return problems


def _check_ray_start(config: dict) -> list[str]:
    problems = []
    head = _commands(config, "head_start_ray_commands")
    worker = _commands(config, "worker_start_ray_commands")
    if "ray start" not in head or "--head" not in head:
        problems.append("head_start_ray_commands: no `ray start --head`")
    if not re.search(r"--dashboard-host[= ](127\.0\.0\.1|localhost)\b", head):
        problems.append("head_start_ray_commands: bind the dashboard to loopback "
                        "(`--dashboard-host=127.0.0.1`); reach it with `ray dashboard <cluster.yaml>`")
    if "0.0.0.0" in head + worker:
        problems.append("start commands: 0.0.0.0 appears; do not bind Ray services to every interface")
    for key, text in (("head_start_ray_commands", head), ("worker_start_ray_commands", worker)):
        if not re.search(r"RAY_AUTH_MODE=token\b[^\n]*ray start", text):
            problems.append(f"{key}: start Ray with token authentication (`RAY_AUTH_MODE=token ray start ...`)")
    mounts = {str(k).rstrip("/"): str(v) for k, v in (config.get("file_mounts") or {}).items()}
    if "~/.ray/auth_token" not in mounts:
        problems.append("file_mounts: copy the token to every node "
                        "(`~/.ray/auth_token: ~/.ray/auth_token`, made with `ray get-auth-token --generate`)")
    return problems


def _check_size(config: dict) -> list[str]:
    problems = []
    total = config.get("max_workers")
    if not isinstance(total, int) or not 0 <= total <= MAX_WORKERS_LIMIT:
        problems.append(f"max_workers: {total!r}; set an integer from 0 to {MAX_WORKERS_LIMIT}")
    idle = config.get("idle_timeout_minutes")
    if not isinstance(idle, (int, float)) or idle <= 0:
        problems.append(f"idle_timeout_minutes: {idle!r}; set a positive number so idle GPUs are released")
    head = config.get("head_node_type")
    for name, node_type in (config.get("available_node_types") or {}).items():
        if name == head:
            continue
        cap = node_type.get("max_workers")
        if not isinstance(cap, int) or (isinstance(total, int) and cap > total):
            problems.append(f"available_node_types.{name}.max_workers: {cap!r}; "
                            f"set an integer no larger than max_workers ({total})")
    return problems


def _worker_types(config: dict) -> dict:
    head = config.get("head_node_type")
    return {k: v for k, v in (config.get("available_node_types") or {}).items() if k != head}


def _head_type(config: dict) -> dict:
    return (config.get("available_node_types") or {}).get(config.get("head_node_type"), {})


def _check_aws(config: dict) -> list[str]:
    problems = []
    sg = (config.get("provider") or {}).get("security_group")
    if sg is not None:
        problems.append("provider.security_group: when Ray creates this group it also opens SSH to "
                        "0.0.0.0/0; create the group yourself (`python -m raysweep.clusters firewall`) "
                        "and name it in each node type's SecurityGroupIds")
        problems += lint_ingress(_aws_rules(sg.get("IpPermissions", [])), "provider.security_group")
    ours = ((config.get("metadata") or {}).get("raysweep") or {}).get("security_group")
    if not ours:
        problems.append("metadata.raysweep.security_group: write the group's ingress rules here "
                        "(IpPermissions) so they are linted and can be created")
    else:
        problems += lint_ingress(_aws_rules(ours.get("IpPermissions", [])), "metadata.raysweep.security_group")
        for proto, lo, hi, sources in _aws_rules(ours.get("IpPermissions", [])):
            if any(lo <= p <= hi for p in RAY_PORTS) and any(_network(s) is not None for s in sources):
                problems.append("metadata.raysweep.security_group: Ray's ports must be reachable "
                                "from the group itself only, not from a CIDR")
    for name, node_type in (config.get("available_node_types") or {}).items():
        node = node_type.get("node_config") or {}
        where = f"available_node_types.{name}.node_config"
        if not node.get("SecurityGroupIds"):
            problems.append(f"{where}: no SecurityGroupIds; without them Ray creates a group with SSH "
                            f"open to 0.0.0.0/0")
        if not (node.get("IamInstanceProfile") or {}).get("Arn") and not (node.get("IamInstanceProfile") or {}).get("Name"):
            problems.append(f"{where}: set IamInstanceProfile explicitly (a least-privilege profile)")
        if (node.get("MetadataOptions") or {}).get("HttpTokens") != "required":
            problems.append(f"{where}: require IMDSv2 (MetadataOptions.HttpTokens: required)")
    if (_head_type(config).get("node_config") or {}).get("InstanceMarketOptions"):
        problems.append("head node: must be on-demand (no InstanceMarketOptions); losing it loses the sweep")
    for name, node_type in _worker_types(config).items():
        market = ((node_type.get("node_config") or {}).get("InstanceMarketOptions") or {}).get("MarketType")
        if market != "spot":
            problems.append(f"available_node_types.{name}: workers must be spot "
                            f"(InstanceMarketOptions.MarketType: spot), got {market!r}")
    return problems


def _check_gcp(config: dict) -> list[str]:
    problems = []
    firewall = ((config.get("metadata") or {}).get("raysweep") or {}).get("firewall")
    if not firewall:
        problems.append("metadata.raysweep.firewall: write the VPC's ingress firewall rules here")
    else:
        problems += lint_ingress(_firewall_rules(firewall), "metadata.raysweep.firewall")
    for name, node_type in (config.get("available_node_types") or {}).items():
        node = node_type.get("node_config") or {}
        where = f"available_node_types.{name}.node_config"
        nics = node.get("networkInterfaces") or []
        if not nics:
            problems.append(f"{where}: set networkInterfaces (a dedicated VPC); otherwise Ray picks any "
                            f"subnet of the project, possibly the `default` network with SSH open to the world")
        for nic in nics:
            if re.search(r"(^|/)default$", str(nic.get("network") or nic.get("subnetwork") or "")):
                problems.append(f"{where}: the `default` network allows SSH from 0.0.0.0/0; use a dedicated VPC")
        accounts = node.get("serviceAccounts") or []
        if not accounts:
            problems.append(f"{where}: set serviceAccounts explicitly (otherwise the Compute Engine "
                            f"default account, usually a project Editor)")
        for account in accounts:
            if str(account.get("email", "")).endswith("-compute@developer.gserviceaccount.com"):
                problems.append(f"{where}: do not use the Compute Engine default service account")
    head_sched = (_head_type(config).get("node_config") or {}).get("scheduling") or {}
    if head_sched.get("preemptible") or head_sched.get("provisioningModel") == "SPOT":
        problems.append("head node: must be on-demand (not preemptible / SPOT)")
    for name, node_type in _worker_types(config).items():
        sched = (node_type.get("node_config") or {}).get("scheduling") or {}
        if not (sched.get("preemptible") is True or sched.get("provisioningModel") == "SPOT"):
            problems.append(f"available_node_types.{name}: workers must be spot "
                            f"(scheduling.provisioningModel: SPOT or preemptible: true)")
    return problems


def _check_local(config: dict) -> list[str]:
    provider = config.get("provider") or {}
    problems = []
    if not provider.get("head_ip") or not provider.get("worker_ips"):
        problems.append("provider: list head_ip and worker_ips")
    firewall = ((config.get("metadata") or {}).get("raysweep") or {}).get("firewall")
    if not firewall:
        problems.append("metadata.raysweep.firewall: write the hosts' ingress firewall rules here")
    else:
        problems += lint_ingress(_firewall_rules(firewall), "metadata.raysweep.firewall")
    return problems


def lint_config(config: dict, text: str = "", ray_version: str | None = None) -> list[str]:
    """Every security problem found in one cluster config (a parsed `ray up` YAML); [] when clean.

    `text` is the file's raw text, scanned for anything that looks like a credential (comments
    included). `ray_version` defaults to the installed Ray's version.
    """
    if ray_version is None:
        ray_version = installed_ray_version()
    problems = []
    for what, pattern in SECRET_PATTERNS.items():
        for match in pattern.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            problems.append(f"line {line}: looks like {what}; keep credentials out of the file")
    provider = (config.get("provider") or {}).get("type")
    if provider not in PROVIDERS:
        problems.append(f"provider.type: {provider!r} has no security rules in raysweep/clusters.py "
                        f"(known: {', '.join(PROVIDERS)}); add them before adding the cluster file")
    problems += _check_size(config) + _check_versions(config, ray_version) + _check_ray_start(config)
    problems += {"aws": _check_aws, "gcp": _check_gcp, "local": _check_local}.get(provider, lambda c: [])(config)
    return problems


def load(path) -> tuple[dict, str]:
    import yaml
    text = Path(path).read_text()
    return yaml.safe_load(text), text


def lint_file(path, ray_version: str | None = None) -> list[str]:
    config, text = load(path)
    return [f"{path}: {p}" for p in lint_config(config, text, ray_version)]


# ---------------------------------------------------------------------------------------------
# Firewall commands from the rules in metadata.raysweep

def firewall_commands(config: dict) -> list[str]:
    """Shell commands that create the security group / firewall rules the config's metadata lists."""
    provider = (config.get("provider") or {}).get("type")
    meta = (config.get("metadata") or {}).get("raysweep") or {}
    lines = []
    if provider == "aws":
        sg = meta["security_group"]
        region = config["provider"]["region"]
        lines.append(f'SG=$(aws ec2 create-security-group --region {region} --vpc-id "$VPC_ID" '
                     f'--group-name {sg["GroupName"]} --description "{sg.get("Description", sg["GroupName"])}" '
                     f'--query GroupId --output text)')
        for perm in sg["IpPermissions"]:
            proto = str(perm.get("IpProtocol", "-1"))
            port = "" if proto == "-1" else f' --port {perm["FromPort"]}' + (
                f'-{perm["ToPort"]}' if perm["ToPort"] != perm["FromPort"] else "")
            base = f'aws ec2 authorize-security-group-ingress --region {region} --group-id "$SG" --protocol {proto}{port}'
            for r in perm.get("IpRanges", []):
                lines.append(f'{base} --cidr {r["CidrIp"]}')
            for _ in perm.get("UserIdGroupPairs", []):
                lines.append(f'{base} --source-group "$SG"')
        lines.append('echo "put $SG in SecurityGroupIds of every node type"')
    elif provider == "gcp":
        project = config["provider"]["project_id"]
        for fw in meta["firewall"]:
            allow = ",".join(",".join(f'{a["IPProtocol"]}:{p}' for p in a["ports"]) if a.get("ports")
                             else a["IPProtocol"] for a in fw["allowed"])
            parts = [f'gcloud compute firewall-rules create {fw["name"]} --project {project}',
                     f'--network {fw["network"].rsplit("/", 1)[-1]} --direction INGRESS --allow {allow}']
            if fw.get("sourceRanges"):
                parts.append("--source-ranges " + ",".join(fw["sourceRanges"]))
            if fw.get("sourceTags"):
                parts.append("--source-tags " + ",".join(fw["sourceTags"]))
            if fw.get("targetTags"):
                parts.append("--target-tags " + ",".join(fw["targetTags"]))
            lines.append(" ".join(parts))
    elif provider == "local":
        lines += ["sudo ufw default deny incoming", "sudo ufw default allow outgoing"]
        for fw in meta["firewall"]:
            for source in fw.get("sourceRanges", []):
                for a in fw["allowed"]:
                    for port in a.get("ports") or [None]:
                        proto = "" if a["IPProtocol"] == "all" else f' proto {a["IPProtocol"]}'
                        to = "" if port is None else f" port {str(port).replace('-', ':')}"
                        lines.append(f"sudo ufw allow from {source} to any{proto}{to}")
        lines.append("sudo ufw enable   # on every host in provider.head_ip / worker_ips")
    else:
        raise ValueError(f"no firewall commands for provider type {provider!r}; known: {', '.join(PROVIDERS)}")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m raysweep.clusters", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    lint_p = sub.add_parser("lint", help="check cluster YAML files; exit 1 on any problem")
    lint_p.add_argument("files", nargs="+")
    fw_p = sub.add_parser("firewall", help="print the commands that create the firewall rules")
    fw_p.add_argument("file")
    args = parser.parse_args(argv)
    if args.command == "lint":
        problems = [p for f in args.files for p in lint_file(f)]
        print("\n".join(problems) if problems else f"ok: {len(args.files)} file(s), no problems")
        return 1 if problems else 0
    print("\n".join(firewall_commands(load(args.file)[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
