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
import math
import re
import shlex
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
    # https://user:token@host or https://ghp_...@host (git+https URLs in setup commands)
    "a credential in a URL": re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://(?:[^\s/@:]+:[^\s/@]+|[A-Za-z0-9_\-]{20,})@"),
}
# A public source broader than this (fewer prefix bits) is "the world" in practice: 0.0.0.0/1 plus
# 128.0.0.0/1 is 0.0.0.0/0 in two rules.
BROADEST_IPV4_PREFIX = 16
BROADEST_IPV6_PREFIX = 32


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


class RuleError(ValueError):
    """A firewall rule that cannot be read; reported as a finding, never a crash."""


def _direction(fw: dict) -> str:
    return str(fw.get("direction", "INGRESS")).strip().upper()


def _ports(spec) -> list[tuple[int, int]]:
    """"22", 22, "8000-9000" -> port ranges; "8265,6379" (one string) is split as gcloud would."""
    ranges = []
    for part in str(spec).split(","):
        lo, _, hi = part.strip().partition("-")
        try:
            lo_i, hi_i = int(lo), int(hi or lo)
        except ValueError:
            raise RuleError(f"port {spec!r} is not a port or a range like 8000-9000") from None
        if not 0 <= lo_i <= hi_i <= 65535:
            raise RuleError(f"port range {spec!r} is outside 0-65535")
        ranges.append((lo_i, hi_i))
    return ranges


def _firewall_rules(firewall: list) -> list[tuple[str, int, int, list[str]]]:
    """GCP firewall resources (also used for on-premise hosts) -> normalised ingress rules.

    Read as GCP reads them: direction is INGRESS unless it says otherwise (any case), and a rule
    with neither sourceRanges nor sourceTags admits 0.0.0.0/0."""
    rules = []
    for fw in firewall or []:
        if not isinstance(fw, dict):
            raise RuleError(f"rule {fw!r} is not a mapping")
        if _direction(fw) != "INGRESS":
            continue
        sources = list(fw.get("sourceRanges") or []) + ["tag:" + t for t in fw.get("sourceTags") or []]
        if not sources:
            sources = ["0.0.0.0/0"]  # GCP's default for an ingress rule without sources
        for allowed in fw.get("allowed") or []:
            proto = str(allowed.get("IPProtocol", "all"))
            for spec in allowed.get("ports") or ["0-65535"]:
                for lo, hi in _ports(spec):
                    rules.append((proto, lo, hi, sources))
    return rules


def _check_firewall(firewall, where: str) -> list[str]:
    """Lint of a GCP-style rule list: directions raysweep cannot create, then the ingress rules."""
    if not isinstance(firewall, list):
        return [f"{where}: expected a list of rules, got {type(firewall).__name__}"]
    problems = []
    for fw in firewall:
        if isinstance(fw, dict) and _direction(fw) not in ("INGRESS", "EGRESS"):
            problems.append(f"{where}: rule {fw.get('name')!r} has direction {fw.get('direction')!r}; "
                            f"use INGRESS (or EGRESS)")
        elif isinstance(fw, dict) and _direction(fw) == "EGRESS":
            problems.append(f"{where}: rule {fw.get('name')!r} is EGRESS; list ingress rules only here "
                            f"(the firewall command creates ingress rules)")
        if (isinstance(fw, dict) and not fw.get("sourceRanges") and not fw.get("sourceTags")
                and _direction(fw) == "INGRESS"):
            problems.append(f"{where}: rule {fw.get('name')!r} has no sourceRanges or sourceTags; GCP then "
                            f"admits 0.0.0.0/0; name the sources")
    try:
        problems += lint_ingress(_firewall_rules(firewall), where)
    except (RuleError, AttributeError, TypeError) as exc:
        problems.append(f"{where}: cannot read the rules: {exc}")
    return problems


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
            broad = not net.is_private and net.prefixlen < (
                BROADEST_IPV4_PREFIX if net.version == 4 else BROADEST_IPV6_PREFIX)
            if broad and net.prefixlen > 0:
                problems.append(f"{where}: ports {lo}-{hi} ({proto}) are open to {source}, a public range "
                                f"broader than /{BROADEST_IPV4_PREFIX if net.version == 4 else BROADEST_IPV6_PREFIX} "
                                f"(rules like 0.0.0.0/1 + 128.0.0.0/1 add up to the world); use your network's CIDR")
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


SCRIPT_RUNNERS = {"bash", "sh", "zsh", "source", ".", "python", "python3", "eval", "exec", "xargs"}


def _simple_commands(text: str) -> list[list[str]]:
    """A shell command line split into simple commands (at ; && || | & and newlines), each a list
    of words. Unparseable text (an open quote) raises RuleError."""
    lexer = shlex.shlex(text, posix=True, punctuation_chars=";&|()")
    lexer.whitespace = " \t\r"
    lexer.whitespace_split = True
    commands, current = [], []
    try:
        for token in lexer:
            if token and set(token) <= set(";&|()\n"):
                commands.append(current)
                current = []
            elif token == "\n":
                commands.append(current)
                current = []
            else:
                current.append(token)
    except ValueError as exc:
        raise RuleError(f"cannot parse {text!r} as a shell command: {exc}") from None
    commands.append(current)
    return [c for c in commands if c]


def _split_env(words: list[str]) -> tuple[dict, list[str]]:
    """Leading VAR=value words (and an `env` prefix) -> (their values, the command's argv)."""
    env = {}
    while words and (re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]) or words[0] == "env"):
        if words[0] != "env":
            name, _, value = words[0].partition("=")
            env[name] = value
        words = words[1:]
    return env, words


def _ray_starts(command: str) -> list[tuple[dict, list[str]]]:
    """Each `ray start` in one command line with the environment it really gets: its own leading
    assignments over what `export` set before it in the same line (VAR=x on another command, as in
    `RAY_AUTH_MODE=token true; ray start`, does not count)."""
    exported, starts = {}, []
    for words in _simple_commands(command):
        env, argv = _split_env(words)
        if argv[:1] == ["export"]:
            exported |= _split_env(argv[1:])[0]
        elif argv[:2] == ["ray", "start"]:
            starts.append((exported | env, argv))
    return starts


def _options(argv: list[str], name: str) -> list[str]:
    """Every value of --name in argv (--name=v or --name v); a repeated option is checked each time."""
    values = []
    for i, word in enumerate(argv):
        if word.startswith(name + "="):
            values.append(word.split("=", 1)[1])
        elif word == name:
            values.append(argv[i + 1] if i + 1 < len(argv) else "")
    return values


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _command_lists(config: dict, key: str) -> list[tuple[str, str]]:
    """(where, command) for the top-level list `key` and that of every node type."""
    out = [(key, str(c)) for c in config.get(key) or []]
    for name, node_type in (config.get("available_node_types") or {}).items():
        out += [(f"available_node_types.{name}.{key}", str(c)) for c in (node_type or {}).get(key) or []]
    return out


def _check_start_commands(key: str, commands: list[tuple[str, str]], head: bool) -> list[str]:
    problems, starts = [], 0
    for where, command in commands:
        try:
            simple = _simple_commands(command)
            found = _ray_starts(command)
        except RuleError as exc:
            problems.append(f"{where}: {exc}")
            continue
        for words in simple:
            argv = _split_env(words)[1]
            if (argv and (argv[0] in SCRIPT_RUNNERS or argv[0].startswith(("./", "/", "~")))
                    and argv[:2] != ["ray", "start"]):
                problems.append(f"{where}: {' '.join(argv)!r} runs a script or program the lint cannot check; "
                                f"write `ray start ...` itself in {key}")
        for env, argv in found:
            starts += 1
            if env.get("RAY_AUTH_MODE") != "token":
                problems.append(f"{where}: start Ray with token authentication (`RAY_AUTH_MODE=token ray start ...`); "
                                f"this `ray start` gets RAY_AUTH_MODE={env.get('RAY_AUTH_MODE')!r}")
            hosts = _options(argv, "--dashboard-host")
            if head and (not hosts or not all(_is_loopback(h) for h in hosts)):
                problems.append(f"{where}: bind the dashboard to loopback (`--dashboard-host=127.0.0.1`, once); "
                                f"got {hosts or 'no --dashboard-host'}; reach it with `ray dashboard <cluster.yaml>`")
            wildcard = [w for w in argv[2:] if w.split("=", 1)[-1] in ("0.0.0.0", "::", "[::]")]
            if wildcard:
                problems.append(f"{where}: 0.0.0.0 appears ({' '.join(wildcard)}); do not bind Ray services "
                                f"to every interface")
            if head and "--head" not in argv:
                problems.append(f"{where}: the head's `ray start` lacks --head")
    if head and not starts:
        problems.append(f"{key}: no `ray start --head`")
    elif not head and not starts:
        problems.append(f"{key}: no `ray start`; start Ray with token authentication "
                        f"(`RAY_AUTH_MODE=token ray start ...`)")
    return problems


def _check_ray_start(config: dict) -> list[str]:
    problems = _check_start_commands("head_start_ray_commands", _command_lists(config, "head_start_ray_commands"), True)
    problems += _check_start_commands("worker_start_ray_commands", _command_lists(config, "worker_start_ray_commands"),
                                      False)
    for key in ("setup_commands", "head_setup_commands", "worker_setup_commands", "initialization_commands"):
        for where, command in _command_lists(config, key):
            if re.search(r"\bray\s+start\b", command):
                problems.append(f"{where}: `ray start` appears outside the start commands (perhaps written into a "
                                f"script); start Ray only in head/worker_start_ray_commands, where it is checked")
    problems += _check_docker(config.get("docker") or {})
    mounts = {str(k).rstrip("/"): str(v) for k, v in (config.get("file_mounts") or {}).items()}
    if "~/.ray/auth_token" not in mounts:
        problems.append("file_mounts: copy the token to every node "
                        "(`~/.ray/auth_token: ~/.ray/auth_token`, made with `ray get-auth-token --generate`)")
    return problems


def _check_docker(docker: dict) -> list[str]:
    """`-p 8265:8265` in docker run options publishes a port on every interface of the host."""
    problems = []
    for key in ("run_options", "head_run_options", "worker_run_options"):
        words = []
        for option in docker.get(key) or []:
            try:
                words += shlex.split(str(option))
            except ValueError as exc:
                problems.append(f"docker.{key}: cannot parse {option!r}: {exc}")
        for i, word in enumerate(words):
            value = None
            if word in ("-p", "--publish") and i + 1 < len(words):
                value = words[i + 1]
            elif word.startswith(("--publish=", "-p=")) or (word.startswith("-p") and len(word) > 2 and word[2] != "="):
                value = word.split("=", 1)[1] if "=" in word[:10] else word[2:]
            if word in ("-P", "--publish-all"):
                problems.append(f"docker.{key}: {word} publishes every exposed port on every interface")
            if value is not None:
                host = value.rsplit(":", 2)[0] if value.count(":") >= 2 else ""
                if not _is_loopback(host):
                    problems.append(f"docker.{key}: `{word} {value}` publishes a port on every interface of the "
                                    f"host; bind it to 127.0.0.1 (-p 127.0.0.1:8265:8265) or drop it")
    return problems


def _check_size(config: dict) -> list[str]:
    problems = []
    total = config.get("max_workers")
    if isinstance(total, bool) or not isinstance(total, int) or not 0 <= total <= MAX_WORKERS_LIMIT:
        problems.append(f"max_workers: {total!r}; set an integer from 0 to {MAX_WORKERS_LIMIT}")
    idle = config.get("idle_timeout_minutes")
    if isinstance(idle, bool) or not isinstance(idle, (int, float)) or not math.isfinite(idle) or idle <= 0:
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
        for _proto, lo, hi, sources in _aws_rules(ours.get("IpPermissions", [])):
            if any(lo <= p <= hi for p in RAY_PORTS) and any(_network(s) is not None for s in sources):
                problems.append("metadata.raysweep.security_group: Ray's ports must be reachable "
                                "from the group itself only, not from a CIDR")
    for name, node_type in (config.get("available_node_types") or {}).items():
        node = node_type.get("node_config") or {}
        where = f"available_node_types.{name}.node_config"
        if not node.get("SecurityGroupIds"):
            problems.append(f"{where}: no SecurityGroupIds; without them Ray creates a group with SSH "
                            f"open to 0.0.0.0/0")
        if (not (node.get("IamInstanceProfile") or {}).get("Arn")
                and not (node.get("IamInstanceProfile") or {}).get("Name")):
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
        problems += _check_firewall(firewall, "metadata.raysweep.firewall")
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
        problems += _check_firewall(firewall, "metadata.raysweep.firewall")
    return problems


def lint_config(config: dict, text: str = "", ray_version: str | None = None) -> list[str]:
    """Every security problem found in one cluster config (a parsed `ray up` YAML); [] when clean.

    `text` is the file's raw text, scanned for anything that looks like a credential (comments
    included). `ray_version` defaults to the installed Ray's version.
    """
    if ray_version is None:
        ray_version = installed_ray_version()
    problems = []
    if not isinstance(config, dict):
        what = "empty" if config is None else f"a {type(config).__name__}, not a mapping"
        return [f"the file is {what}; expected a `ray up` cluster config"]
    for what, pattern in SECRET_PATTERNS.items():
        for match in pattern.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            problems.append(f"line {line}: looks like {what}; keep credentials out of the file")
    provider = config.get("provider")
    provider = provider.get("type") if isinstance(provider, dict) else provider
    if provider not in PROVIDERS:
        problems.append(f"provider.type: {provider!r} has no security rules in raysweep/clusters.py "
                        f"(known: {', '.join(PROVIDERS)}); add them before adding the cluster file")
    checks = [_check_size, lambda c: _check_versions(c, ray_version), _check_ray_start,
              {"aws": _check_aws, "gcp": _check_gcp, "local": _check_local}.get(provider, lambda c: [])]
    for check in checks:
        try:
            problems += check(config)
        except (AttributeError, TypeError, ValueError, KeyError) as exc:  # a malformed section: a finding, not a crash
            problems.append(f"a section could not be checked ({type(exc).__name__}: {exc}); fix its structure")
    return problems


def load(path) -> tuple[dict, str]:
    import yaml
    text = Path(path).read_text()
    return yaml.safe_load(text), text


def lint_file(path, ray_version: str | None = None) -> list[str]:
    import yaml
    try:
        config, text = load(path)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        return [f"{path}: cannot read it as YAML: {exc}"]
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
            base = (f'aws ec2 authorize-security-group-ingress --region {region} --group-id "$SG" '
                    f'--protocol {proto}{port}')
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
    problems = lint_file(args.file)
    if problems:  # never turn rules the lint rejects into cloud commands
        print("\n".join(problems + [f"{args.file}: refusing to print firewall commands until these are fixed"]),
              file=sys.stderr)
        return 1
    print("\n".join(firewall_commands(load(args.file)[0])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
