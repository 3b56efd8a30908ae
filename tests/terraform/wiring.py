"""What the deployment must wire together, as checks over a Stack (parsed terraform/ plus the
applied modules/render). Each check returns the problems it finds; an empty list means it holds.
test_wiring.py runs every check on terraform/, test_mutations.py runs them on broken copies and
expects the matching check to notice.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable

from hcl import Module, blocks, references, walk_raw
from stack import REPO, Stack, provider_schemas

CHECKS: dict[str, Callable[[Stack], list[str]]] = {}


def check(fn: Callable[[Stack], list[str]]) -> Callable[[Stack], list[str]]:
    CHECKS[fn.__name__.removeprefix("check_")] = fn
    return fn


def resolve(stack: Stack, value: Any) -> Any:
    """A root-module value as far as it can be known offline (literals, var defaults, locals,
    module.render outputs); anything else stays an expression string."""
    from api_shapes import Unresolved, env_of, interpolate

    try:
        return interpolate(value, env_of(stack))
    except Unresolved:
        return value


def one(items: list, what: str, problems: list[str]) -> Any:
    if len(items) != 1:
        problems.append(f"expected exactly one {what}, found {len(items)}")
        return None
    return items[0]


################################################################################
# Declarations and references
################################################################################


@check
def check_references(stack: Stack) -> list[str]:
    """Every var., local., module output, resource and data source used is declared."""
    problems = []
    mods = stack.modules()
    for rel, mod in mods.items():
        everything = [mod.locals, mod.outputs, mod.modules, mod.resources, mod.data, mod.variables, mod.providers]
        for ref in (r for part in everything for r in references(part)):
            where = f"{rel}: {ref.kind} {ref.type + '.' if ref.type else ''}{ref.name}"
            if ref.kind == "var" and ref.name not in mod.variables:
                problems.append(f"{where} is not declared")
            elif ref.kind == "local" and ref.name not in mod.locals:
                problems.append(f"{where} is not declared")
            elif ref.kind == "resource" and (ref.type, ref.name) not in mod.resources:
                problems.append(f"{where} is not declared")
            elif ref.kind == "data" and (ref.type, ref.name) not in mod.data:
                problems.append(f"{where} is not declared")
            elif ref.kind == "module":
                if ref.name not in mod.modules:
                    problems.append(f"{where} is not declared")
                    continue
                child = child_module(stack, rel, mod.modules[ref.name])
                if child and ref.attribute and ref.attribute not in child.outputs:
                    problems.append(f"{where}.{ref.attribute}: no such output")
        for name, body in mod.modules.items():
            child = child_module(stack, rel, body)
            if child is None:
                continue
            passed = set(body) - {"source", "version", "providers", "count", "for_each", "depends_on"}
            for arg in sorted(passed - set(child.variables)):
                problems.append(f"{rel}: module {name} has no variable {arg}")
            for var, decl in child.variables.items():
                if "default" not in decl and var not in passed:
                    problems.append(f"{rel}: module {name} needs variable {var}")
    return problems


def child_module(stack: Stack, rel: str, body: dict) -> Module | None:
    source = body.get("source", "")
    if not source.startswith("."):
        return None  # a registry module: not checked here
    path = (stack.root_dir / rel / source).resolve()
    known = {m.path.resolve(): m for m in stack.modules().values()}
    return known.get(path) or Module.load(path)


@check
def check_declarations(stack: Stack) -> list[str]:
    """Variables typed and described (and used), outputs described."""
    problems = []
    for rel, mod in stack.modules().items():
        used = {r.name for part in (mod.locals, mod.outputs, mod.modules, mod.resources, mod.data, mod.variables, mod.providers)
                for r in references(part) if r.kind == "var"}
        for name, v in mod.variables.items():
            if not v.get("description"):
                problems.append(f"{rel}: variable {name} has no description")
            if "type" not in v:
                problems.append(f"{rel}: variable {name} has no type")
            if name not in used:
                problems.append(f"{rel}: variable {name} is never used")
        for name, o in mod.outputs.items():
            if not o.get("description"):
                problems.append(f"{rel}: output {name} has no description")
    return problems


################################################################################
# The AWS provider's schema
################################################################################


@check
def check_provider_schema(stack: Stack) -> list[str]:
    """Every resource, data source, argument and block exists in the provider schemas (the oldest
    allowed AWS provider and the newest), required ones are set, referenced attributes exist."""
    problems = []
    for label, types in provider_schemas().items():
        prefix = label.split("-")[0] + "_"
        for rel, mod in stack.modules().items():
            for (kind, rtype, name), raw in mod.raw_blocks.items():
                if not rtype.startswith(prefix):
                    continue
                schema = types.get(f"{kind}.{rtype}")
                where = f"{label}: {rel}/{mod.files[(kind, rtype, name)]}: {kind} {rtype}.{name}"
                if schema is None:
                    problems.append(f"{where}: not in tests/terraform/provider-schema.json: a new type needs "
                                    "tests/terraform/provider_schema.py run again (else no such type exists)")
                    continue
                problems.extend(schema_problems(raw, schema, where))
            for part in (mod.locals, mod.outputs, mod.modules, mod.resources, mod.data):
                for ref in references(part):
                    if ref.kind not in ("resource", "data") or not ref.type.startswith(prefix) or not ref.attribute:
                        continue
                    schema = types.get(f"{ref.kind}.{ref.type}")
                    if schema and ref.attribute not in schema["readable"] and ref.attribute not in schema["blocks"]:
                        problems.append(f"{label}: {rel}: {ref.type}.{ref.name}.{ref.attribute}: no such attribute")
    return sorted(set(problems))


def schema_problems(raw: dict, schema: dict, where: str) -> list[str]:
    problems = []
    seen = set()
    for name, value, is_block in walk_raw(raw):
        if name in ("count", "for_each", "depends_on", "lifecycle", "provider"):
            continue
        seen.add(name)
        if is_block:
            if name in schema["blocks"]:
                for body in value:
                    problems.extend(schema_problems(body, schema["blocks"][name], f"{where}.{name}"))
            elif schema["attributes"].get(name, {}).get("type") == "any":
                pass  # a tree the bindings leave untyped (WAF statements)
            else:
                problems.append(f"{where}: no block {name}")
        elif name not in schema["attributes"]:
            problems.append(f"{where}: no argument {name}" + (" (it is a block)" if name in schema["blocks"] else ""))
    for name, a in schema["attributes"].items():
        if a["required"] and name not in seen:
            problems.append(f"{where}: required argument {name} is missing")
    for name, b in schema["blocks"].items():
        if b.get("required") and name not in seen:
            problems.append(f"{where}: required block {name} is missing")
    return problems


################################################################################
# Public ALB: HTTPS only, a token check on everything that forwards
################################################################################


def public_listeners(stack: Stack) -> dict[str, dict]:
    return {n: l for n, l in stack.root.of_type("aws_lb_listener").items()
            if l.get("load_balancer_arn") == "${aws_lb.public.arn}"}


@check
def check_alb_https_only(stack: Stack) -> list[str]:
    problems = []
    listeners = public_listeners(stack)
    if not listeners:
        return ["no listener on the public ALB"]
    for name, l in listeners.items():
        actions = blocks(l, "default_action")
        if l.get("protocol") == "HTTPS":
            if not l.get("certificate_arn"):
                problems.append(f"listener {name}: HTTPS without a certificate")
            policy = resolve(stack, l.get("ssl_policy"))
            if not str(policy).startswith("ELBSecurityPolicy-TLS13-"):
                problems.append(f"listener {name}: ssl_policy {policy} is not a TLS 1.3 policy")
        else:
            redirects = [a for a in actions if a.get("type") == "redirect"
                         and blocks(a, "redirect") and blocks(a, "redirect")[0].get("protocol") == "HTTPS"]
            if len(actions) != 1 or not redirects:
                problems.append(f"listener {name}: {l.get('protocol')} listener does something other than redirect to HTTPS")
        for a in actions:
            if a.get("type") == "forward" or blocks(a, "forward"):
                problems.append(f"listener {name}: its default action forwards without a token check")
    public_rules = {n: r for n, r in stack.root.of_type("aws_lb_listener_rule").items()
                    if r.get("listener_arn", "").removeprefix("${aws_lb_listener.").split(".")[0] in listeners}
    for name, r in public_rules.items():
        owner = r["listener_arn"].removeprefix("${aws_lb_listener.").split(".")[0]
        if listeners[owner].get("protocol") != "HTTPS":
            problems.append(f"rule {name}: on a plain-HTTP listener")
    return problems


@check
def check_jwt_validation(stack: Stack) -> list[str]:
    problems = []
    listeners = public_listeners(stack)
    rules = {n: r for n, r in stack.root.of_type("aws_lb_listener_rule").items()
             if r.get("listener_arn", "").removeprefix("${aws_lb_listener.").split(".")[0] in listeners}
    forwarding = {n: r for n, r in rules.items() if any(a.get("type") == "forward" for a in blocks(r, "action"))}
    if not forwarding:
        problems.append("no rule of the public ALB forwards to the tasks")
    invoke = stack.rendered["invoke_scope"]
    for name, r in forwarding.items():
        actions = blocks(r, "action")
        forward = next(a for a in actions if a.get("type") == "forward")
        checks = [a for a in actions if a.get("type") == "jwt-validation"]
        if not checks:
            problems.append(f"rule {name}: forwards without a jwt-validation action")
            continue
        jwt = checks[0]
        if int(jwt.get("order", 0)) >= int(forward.get("order", 1)):
            problems.append(f"rule {name}: jwt-validation does not come before forward")
        conf = (blocks(jwt, "jwt_validation") or [{}])[0]
        if resolve(stack, conf.get("issuer")) != stack.rendered["issuer"]:
            problems.append(f"rule {name}: issuer is not the user pool's ({conf.get('issuer')})")
        if resolve(stack, conf.get("jwks_endpoint")) != stack.rendered["jwks_url"]:
            problems.append(f"rule {name}: jwks_endpoint is not the user pool's ({conf.get('jwks_endpoint')})")
        claims = blocks(conf, "additional_claim")
        scope = [c for c in claims if c.get("name") == "scope"]
        if not scope:
            problems.append(f"rule {name}: no additional claim on scope")
            continue
        if scope[0].get("format") != "space-separated-values":
            problems.append(f"rule {name}: scope claim format {scope[0].get('format')!r}: Cognito's scope is a "
                            "space-separated string, only space-separated-values matches it")
        values = resolve(stack, scope[0].get("values", []))
        if invoke not in values:
            problems.append(f"rule {name}: scope claim values {values} lack {invoke}")
    return problems


@check
def check_alb_settings(stack: Stack) -> list[str]:
    problems = []
    lb = stack.root.resource("aws_lb", "public")
    idle = resolve(stack, lb.get("idle_timeout"))
    if not isinstance(idle, (int, float)) or idle < 300:
        problems.append(f"public ALB idle_timeout {idle}: LLM streams need at least 300 s (Envoy's stream idle timeout)")
    for name, l in stack.root.of_type("aws_lb").items():
        if l.get("drop_invalid_header_fields") is not True:
            problems.append(f"aws_lb.{name}: drop_invalid_header_fields must be true")
    tg = stack.root.resource("aws_lb_target_group", "envoy")
    hc = (blocks(tg, "health_check") or [{}])[0]
    if resolve(stack, hc.get("path")) != stack.rendered["health_check_path"]:
        problems.append(f"target group health check path {hc.get('path')} is not Envoy's route to tollgate's /readyz")
    return problems


################################################################################
# WAF
################################################################################

REQUIRED_MANAGED_GROUPS = {
    "AWSManagedRulesCommonRuleSet",
    "AWSManagedRulesKnownBadInputsRuleSet",
    "AWSManagedRulesAmazonIpReputationList",
    "AWSManagedRulesAnonymousIpList",
}


@check
def check_waf(stack: Stack) -> list[str]:
    problems = []
    groups = stack.root.locals.get("waf_managed_rule_groups", {})
    acl = stack.root.resource("aws_wafv2_web_acl", "this")
    dynamic_rules = [d["rule"] for d in acl.get("dynamic", []) if "rule" in d]
    if not any(d.get("for_each") == "${local.waf_managed_rule_groups}" for d in dynamic_rules):
        problems.append("the managed rule groups are not rules of the web ACL")
    for g in sorted(REQUIRED_MANAGED_GROUPS - set(groups)):
        problems.append(f"managed rule group {g} missing")
    if "HostingProviderIPList" not in groups.get("AWSManagedRulesAnonymousIpList", {}).get("count_only", []):
        problems.append("HostingProviderIPList must be counted, not blocked: agents run on cloud hosts")
    priorities = [g.get("priority") for g in groups.values()]
    rate_rules = [r for r in blocks(acl, "rule")
                  if any(blocks(s, "rate_based_statement") for s in blocks(r, "statement"))]
    rate = one(rate_rules, "rate-based rule", problems)
    if rate:
        priorities.append(rate.get("priority"))
        stmt = blocks(blocks(rate, "statement")[0], "rate_based_statement")[0]
        limit = resolve(stack, stmt.get("limit"))
        if limit != 2000:
            problems.append(f"rate limit {limit} per 5 minutes; the documented limit is 2000")
        if stmt.get("evaluation_window_sec") not in (None, 300) or stmt.get("aggregate_key_type") != "IP":
            problems.append("the rate limit must be per IP over 5 minutes")
        if not blocks(blocks(rate, "action")[0], "block"):
            problems.append("the rate-based rule does not block")
    if len(priorities) != len(set(priorities)):
        problems.append(f"WAF rule priorities collide: {priorities}")
    assoc = stack.root.of_type("aws_wafv2_web_acl_association")
    if not any(a.get("resource_arn") == "${aws_lb.public.arn}" for a in assoc.values()):
        problems.append("the web ACL is not associated with the public ALB")
    logging = stack.root.of_type("aws_wafv2_web_acl_logging_configuration")
    redacted = [h.get("name", "").lower() for lc in logging.values() for rf in blocks(lc, "redacted_fields")
                for h in blocks(rf, "single_header")]
    if "authorization" not in redacted:
        problems.append("WAF logs must redact the authorization header")
    return problems


@check
def check_api_shapes(stack: Stack) -> list[str]:
    """Listener rules, listeners and the WAF web ACL as the AWS API receives them (botocore's
    models: types, required members, enums), WAF statements included."""
    from api_shapes import shape_problems

    return shape_problems(stack)


################################################################################
# DynamoDB and IAM
################################################################################


@check
def check_dynamodb_table(stack: Stack) -> list[str]:
    problems = []
    t = stack.root.resource("aws_dynamodb_table", "this")
    if t.get("hash_key") != "pk" or t.get("range_key") != "sk":
        problems.append(f"table key is {t.get('hash_key')}/{t.get('range_key')}; tollgate uses pk (partition) + sk (sort)")
    attrs = {a.get("name"): a.get("type") for a in blocks(t, "attribute")}
    if attrs != {"pk": "S", "sk": "S"}:
        problems.append(f"table attributes {attrs}; tollgate's keys are strings pk and sk")
    ttl = (blocks(t, "ttl") or [{}])[0]
    if ttl.get("attribute_name") != "expires_at" or ttl.get("enabled") is not True:
        problems.append("TTL must be enabled on expires_at (every counter carries it)")
    if (blocks(t, "point_in_time_recovery") or [{}])[0].get("enabled") is not True:
        problems.append("point-in-time recovery must be on")
    sse = (blocks(t, "server_side_encryption") or [{}])[0]
    if sse.get("enabled") is not True or not str(sse.get("kms_key_arn", "")).startswith("${aws_kms_key."):
        problems.append("the table must be encrypted with the customer managed key")
    if t.get("deletion_protection_enabled") is not True:
        problems.append("deletion protection must be on")
    if t.get("billing_mode") != "PAY_PER_REQUEST":
        problems.append("the table should be on-demand (as `tollgate admin init-table` makes it)")
    return problems


def dynamodb_actions_called() -> set[str]:
    """The IAM actions of the DynamoDB calls src/store/dynamodb.rs makes at run time.
    TransactWriteItems is authorised per item (Put -> PutItem, Update -> UpdateItem, ...);
    CreateTable/DescribeTable/UpdateTimeToLive serve `tollgate admin init-table` only."""
    src = (REPO / "src" / "store" / "dynamodb.rs").read_text()
    calls = set(re.findall(r"\.client\s*\.(\w+)\(\)", src))
    admin_only = {"create_table", "describe_table", "update_time_to_live"}
    actions = set()
    for call in calls - admin_only:
        if call == "transact_write_items":
            kinds = set(re.findall(r"TransactWriteItem::builder\(\)\.(\w+)\(", src))
            item = {"put": "PutItem", "update": "UpdateItem", "delete": "DeleteItem", "condition_check": "ConditionCheckItem"}
            actions |= {f"dynamodb:{item[k]}" for k in kinds}
        else:
            actions.add("dynamodb:" + "".join(p.title() for p in call.split("_")))
    return actions


def policy_statements(mod: Module) -> list[tuple[str, dict]]:
    return [(name, st) for (t, name), doc in mod.data.items() if t == "aws_iam_policy_document"
            for st in blocks(doc, "statement")]


@check
def check_iam_dynamodb(stack: Stack) -> list[str]:
    problems = []
    wanted = dynamodb_actions_called()
    granted = set(stack.root.locals.get("dynamodb_actions", []))
    if granted != wanted:
        problems.append(f"local.dynamodb_actions {sorted(granted)} != the calls tollgate makes {sorted(wanted)}")
    for doc, st in policy_statements(stack.root):
        actions = st.get("actions", [])
        if isinstance(actions, str) and actions == "${local.dynamodb_actions}":
            if st.get("resources") != ["${aws_dynamodb_table.this.arn}"]:
                problems.append(f"{doc}: DynamoDB actions on {st.get('resources')}, not only the table")
        elif any(str(a).startswith("dynamodb:") for a in (actions if isinstance(actions, list) else [])):
            problems.append(f"{doc}: DynamoDB actions outside local.dynamodb_actions: {actions}")
    for role in ("task", "lambda"):
        if not any(st.get("actions") == "${local.dynamodb_actions}" for doc, st in policy_statements(stack.root) if doc == role):
            problems.append(f"policy {role} does not grant the table")
    return problems


# (policy document, action) pairs that AWS offers no resource to scope to.
UNSCOPABLE = {("execution", "ecr:GetAuthorizationToken")}


@check
def check_iam_least_privilege(stack: Stack) -> list[str]:
    problems = []
    for doc, st in policy_statements(stack.root):
        if doc == "kms":
            continue  # a key policy: "*" is the key itself
        actions = st.get("actions", [])
        actions = actions if isinstance(actions, list) else [actions]
        for a in actions:
            if isinstance(a, str) and ("*" in a):
                problems.append(f"{doc}: wildcard action {a}")
        resources = st.get("resources", [])
        resources = resources if isinstance(resources, list) else [resources]
        if any(r == "*" or (isinstance(r, str) and r.endswith(":*:*")) for r in resources):
            if not all((doc, a) in UNSCOPABLE for a in actions):
                problems.append(f"{doc}: {actions} on *")
        if "bedrock:ApplyGuardrail" in actions and resources != ["${local.guardrail_arns}"]:
            problems.append(f"{doc}: ApplyGuardrail on {resources}, not the guardrail")
    return problems


################################################################################
# Ports, containers, task
################################################################################


@check
def check_ports(stack: Stack) -> list[str]:
    problems = []
    port = stack.rendered["listener_port"]
    envoy = stack.rendered["envoy_yaml"]
    listener = re.search(r"- name: llm\s+address:\s+socket_address: \{ address: 0\.0\.0\.0, port_value: (\d+) \}", envoy)
    if not listener or int(listener.group(1)) != port:
        problems.append(f"Envoy listens on {listener and listener.group(1)}, render says {port}")
    mappings = [m["containerPort"] for m in stack.container("envoy").get("portMappings", [])]
    if mappings != [port]:
        problems.append(f"envoy container exposes {mappings}, not only {port}")
    for kind, name, key in [
        ("aws_lb_target_group", "envoy", "port"),
        ("aws_vpc_security_group_ingress_rule", "tasks_from_alb", "from_port"),
        ("aws_vpc_security_group_ingress_rule", "tasks_from_alb", "to_port"),
        ("aws_vpc_security_group_egress_rule", "alb_to_tasks", "from_port"),
        ("aws_vpc_security_group_egress_rule", "alb_to_tasks", "to_port"),
    ]:
        got = resolve(stack, stack.root.resource(kind, name).get(key))
        if got != port:
            problems.append(f"{kind}.{name}.{key} = {got}, Envoy listens on {port}")
    lb = one(blocks(stack.root.resource("aws_ecs_service", "this"), "load_balancer"), "service load_balancer", problems)
    if lb and (resolve(stack, lb.get("container_port")) != port or lb.get("container_name") != "envoy"):
        problems.append(f"the service registers {lb.get('container_name')}:{lb.get('container_port')}, not envoy:{port}")
    grpc = re.search(r"cluster_name: tollgate\n.*?port_value: (\d+)", envoy, re.S)
    env = stack.rendered["tollgate_environment"]
    if not grpc or env.get("TOLLGATE_SERVER__GRPC_LISTEN") != f"127.0.0.1:{grpc.group(1)}":
        problems.append("Envoy's tollgate cluster and tollgate's grpc_listen disagree")
    http = re.search(r"cluster_name: tollgate_http\n.*?port_value: (\d+)", envoy, re.S)
    if not http or env.get("TOLLGATE_SERVER__HTTP_LISTEN") != f"127.0.0.1:{http.group(1)}":
        problems.append("Envoy's health route and tollgate's http_listen disagree")
    return problems


@check
def check_containers(stack: Stack) -> list[str]:
    problems = []
    defs = stack.rendered["container_definitions"]
    problems += botocore_problems(defs)
    tollgate, envoy = stack.container("tollgate"), stack.container("envoy")
    grace = int(stack.rendered["tollgate_environment"].get("TOLLGATE_SERVER__SHUTDOWN_GRACE_SECONDS", "0"))
    for c in defs:
        if c.get("readonlyRootFilesystem") is not True:
            problems.append(f"container {c['name']}: root file system not read-only")
        env = {e["name"]: e["value"] for e in c.get("environment", [])}
        for key in env:
            if key.endswith("_API_KEY") or "SECRET" in key:
                problems.append(f"container {c['name']}: {key} in plain environment (Secrets Manager only)")
    for c in (tollgate, envoy):
        if c.get("stopTimeout", 30) <= grace:
            problems.append(f"container {c['name']}: stopTimeout {c.get('stopTimeout')} is not above shutdown_grace_seconds {grace}")
        if str(c.get("user", "0")).split(":")[0] in ("0", "root"):
            problems.append(f"container {c['name']} runs as root")
    for c in defs:
        if not c.get("restartPolicy", {}).get("enabled"):
            problems.append(f"container {c['name']}: no restart policy, so its exit replaces the task (and a new task starts with an empty spool volume)")
    if tollgate.get("healthCheck", {}).get("command", [])[1:] != ["/usr/local/bin/tollgate", "check"]:
        problems.append("tollgate's health check is not `tollgate check`")
    if {"containerName": "tollgate", "condition": "HEALTHY"} not in envoy.get("dependsOn", []):
        problems.append("Envoy must start after tollgate is healthy")
    secrets = {s["name"] for s in envoy.get("secrets", [])}
    for key in re.findall(r"%ENVIRONMENT\((\w+)\)%", stack.rendered["envoy_yaml"]):
        if key not in secrets:
            problems.append(f"Envoy reads {key}, which the task does not inject from Secrets Manager")
    spool = stack.rendered["tollgate_environment"].get("TOLLGATE_STORE__DYNAMODB__SPOOL_PATH", "")
    mounts = [m for m in tollgate.get("mountPoints", []) if spool.startswith(m["containerPath"].rstrip("/") + "/")]
    if not mounts:
        problems.append(f"the spool {spool} is not on a mounted volume (the root file system is read-only)")
    task = stack.root.resource("aws_ecs_task_definition", "this")
    volumes = {v.get("name") for v in blocks(task, "volume")}
    for m in tollgate.get("mountPoints", []):
        if m["sourceVolume"] not in volumes:
            problems.append(f"mount of volume {m['sourceVolume']}, which the task definition does not declare")
    if task.get("container_definitions") != "${module.render.container_definitions_json}":
        problems.append("the task's container definitions are not module.render's")
    return problems


def botocore_problems(defs: list[dict]) -> list[str]:
    """The container definitions against botocore's ECS model (RegisterTaskDefinition)."""
    import botocore.session
    from botocore.validate import ParamValidator

    model = botocore.session.get_session().get_service_model("ecs")
    shape = model.operation_model("RegisterTaskDefinition").input_shape
    params = {
        "family": "tollgate",
        "containerDefinitions": defs,
        "networkMode": "awsvpc",
        "requiresCompatibilities": ["FARGATE"],
        "cpu": "1024",
        "memory": "2048",
        "volumes": [{"name": "spool"}],
        "runtimePlatform": {"cpuArchitecture": "ARM64", "operatingSystemFamily": "LINUX"},
    }
    report = ParamValidator().validate(params, shape)
    return [f"botocore ECS RegisterTaskDefinition: {report.generate_report()}"] if report.has_errors() else []


@check
def check_ecs_service(stack: Stack) -> list[str]:
    problems = []
    svc = stack.root.resource("aws_ecs_service", "this")
    cb = (blocks(svc, "deployment_circuit_breaker") or [{}])[0]
    if cb.get("enable") is not True or cb.get("rollback") is not True:
        problems.append("the service needs the deployment circuit breaker with rollback")
    net = (blocks(svc, "network_configuration") or [{}])[0]
    if net.get("assign_public_ip") is not False:
        problems.append("tasks must not get public IPs")
    policies = stack.root.of_type("aws_appautoscaling_policy")
    # One policy per entry of its for_each map ({name = {metric = ..., ...}}), or written out.
    metrics = {entry.get("metric") for p in policies.values() if isinstance(p.get("for_each"), dict)
               for entry in p["for_each"].values()}
    metrics |= {blocks(c, "predefined_metric_specification")[0].get("predefined_metric_type")
                for p in policies.values() for c in blocks(p, "target_tracking_scaling_policy_configuration")}
    for m in ("ECSServiceAverageCPUUtilization", "ALBRequestCountPerTarget"):
        if m not in metrics:
            problems.append(f"no autoscaling on {m}")
    return problems


################################################################################
# Lambda
################################################################################


@check
def check_lambda(stack: Stack) -> list[str]:
    problems = []
    wanted = {"budget-enforcement", "admin-api", "usage-recorder"}
    functions = stack.root.of_type("aws_lambda_function")
    fn = functions.get("this", {})
    if set(re.findall(r'"([\w-]+)"', str(stack.root.locals.get("functions", "")))) != wanted:
        problems.append(f"local.functions is not {sorted(wanted)}")
    if fn.get("for_each") != "${local.functions}":
        problems.append("aws_lambda_function.this is not one per function")
    if fn.get("runtime") != "provided.al2023":
        problems.append(f"runtime {fn.get('runtime')}: the binaries need provided.al2023 (glibc 2.30+)")
    if fn.get("architectures") != ["arm64"]:
        problems.append(f"architectures {fn.get('architectures')}: dev/lambda-build makes arm64 zips")
    if fn.get("handler") != "bootstrap" or "bootstrap.zip" not in str(fn.get("filename")):
        problems.append("the functions must run bootstrap from dev/lambda-build's bootstrap.zip")
    env = (blocks(fn, "environment") or [{}])[0].get("variables")
    if env != "${module.render.lambda_environments[each.key]}":
        problems.append("the functions' environment is not module.render's")
    for name, e in stack.rendered["lambda_environments"].items():
        if e.get("TOLLGATE_STORE__BACKEND") != "dynamodb":
            problems.append(f"{name}: the functions need TOLLGATE_STORE__BACKEND=dynamodb")
    if "TOLLGATE_WEBHOOK__SECRET" not in stack.rendered["lambda_environments"]["budget-enforcement"]:
        problems.append("budget-enforcement has no webhook secret (the internal ALB does not authenticate)")
    sub = one(list(stack.root.of_type("aws_cloudwatch_log_subscription_filter").values()), "subscription filter", problems)
    if sub:
        if sub.get("filter_pattern") != "${module.render.usage_log_filter_pattern}":
            problems.append("the subscription filter pattern is not module.render's (tested against the fixture)")
        if "usage-recorder" not in str(sub.get("destination_arn")):
            problems.append("the access-log subscription does not reach usage-recorder")
    invoke = stack.root.of_type("aws_lambda_function_event_invoke_config")
    if not any("usage-recorder" in str(c.get("function_name")) and blocks(blocks(c, "destination_config")[0], "on_failure")
               for c in invoke.values()):
        problems.append("usage-recorder needs an on-failure destination")
    routes = stack.root.of_type("aws_apigatewayv2_route")
    for name, r in routes.items():
        if r.get("authorization_type") != "JWT" or r.get("authorization_scopes") != ["${local.scopes.admin}"]:
            problems.append(f"admin route {name} must require a JWT with the admin scope")
    tg = stack.root.resource("aws_lb_target_group", "budget_enforcement")
    if tg.get("target_type") != "lambda":
        problems.append("budget-enforcement is not behind the internal ALB")
    if stack.root.resource("aws_lb", "webhook").get("internal") is not True:
        problems.append("the webhook ALB must be internal")
    return problems


################################################################################
# Logs, metrics, alarms
################################################################################


@check
def check_logs_and_alarms(stack: Stack) -> list[str]:
    problems = []
    for name, g in stack.root.of_type("aws_cloudwatch_log_group").items():
        if "retention_in_days" not in g or "kms_key_id" not in g:
            problems.append(f"log group {name} needs retention and the KMS key")
    agw = stack.root.resource("aws_cloudwatch_log_group", "agentgateway")
    days = resolve(stack, agw.get("retention_in_days"))
    if not isinstance(days, int) or days > 7:
        problems.append(f"agentgateway's log group keeps bearer tokens for {days} days (7 at most)")
    alarms = stack.root.of_type("aws_cloudwatch_metric_alarm")
    text = json.dumps(alarms) + json.dumps(stack.root.locals.get("tollgate_alarms", {}))
    for metric in ("tollgate_store_up", "tollgate_spool_pending", "HTTPCode_Target_5XX_Count", "HTTPCode_ELB_5XX_Count"):
        if metric not in text:
            problems.append(f"no alarm on {metric}")
    if not any(a.get("namespace") == "AWS/Lambda" and a.get("metric_name") == "Errors" and a.get("for_each") == "${local.functions}"
               for a in alarms.values()):
        problems.append("no Lambda errors alarm for every function")
    adot = stack.rendered["adot_yaml"]
    for metric in ("tollgate_store_up", "tollgate_spool_pending"):
        if f'"^{metric}"' not in adot:
            problems.append(f"the collector does not export {metric}, which an alarm watches")
    if stack.container("adot") and "127.0.0.1:" + stack.rendered["tollgate_environment"]["TOLLGATE_SERVER__HTTP_LISTEN"].split(":")[1] not in adot:
        problems.append("the collector does not scrape tollgate's http_listen")
    return problems


################################################################################
# Cognito
################################################################################


@check
def check_cognito(stack: Stack) -> list[str]:
    problems = []
    client = stack.root.resource("aws_cognito_user_pool_client", "this")
    if client.get("allowed_oauth_flows") != ["client_credentials"] or client.get("generate_secret") is not True:
        problems.append("app clients must be confidential client_credentials clients")
    pool = stack.root.resource("aws_cognito_user_pool", "this")
    for lc in blocks(pool, "lambda_config"):
        for ptg in blocks(lc, "pre_token_generation_config"):
            if ptg.get("lambda_version") != "V3_0":
                problems.append("a pre-token-generation trigger must be V3_0 (client-credentials tokens)")
        if "pre_token_generation" in lc:
            problems.append("pre_token_generation (V1) does not run for client-credentials tokens")
    rs = stack.root.resource("aws_cognito_resource_server", "this")
    identifier = resolve(stack, rs.get("identifier"))
    scopes = {f"{identifier}/{s.get('scope_name')}" for s in blocks(rs, "scope")}
    for s in (stack.rendered["invoke_scope"], stack.rendered["admin_scope"]):
        if s not in scopes:
            problems.append(f"the resource server does not define {s}, which tollgate requires")
    return problems


################################################################################
# Rendered configuration
################################################################################


@check
def check_envoy_template(stack: Stack) -> list[str]:
    """envoy/ecs.yaml and envoy/ecs-fast.yaml are the template's renderings with the example values
    (four_phase and fast)."""
    problems = []
    for name, rendered in (("ecs.yaml", stack.rendered), ("ecs-fast.yaml", stack.rendered_fast)):
        if rendered["envoy_yaml"] != (REPO / "envoy" / name).read_text():
            problems.append(f"envoy/{name} differs from modules/render's template rendered with "
                            "tests/terraform/render-example.tfvars.json: re-render it (tests/terraform/render_envoy.py)")
    return problems


def envoy_parts(envoy_yaml: str) -> dict[str, Any]:
    """The pieces of a rendered Envoy bootstrap the attachment checks read."""
    from stack import decode_yaml

    config = decode_yaml(envoy_yaml)
    listener = config["static_resources"]["listeners"][0]
    hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
    vhost = hcm["route_config"]["virtual_hosts"][0]
    return {
        "config": config,
        "listener": listener,
        "hcm": hcm,
        "vhost": vhost,
        "routes": vhost["routes"],
        "filters": {f["name"]: f.get("typed_config", {}) for f in hcm["http_filters"]},
        "filter_order": [f["name"] for f in hcm["http_filters"]],
        "clusters": {c["name"]: c for c in config["static_resources"]["clusters"]},
    }


EXT_PROC = "envoy.filters.http.ext_proc"
JWT_AUTHN = "envoy.filters.http.jwt_authn"
PROVIDER_CLUSTERS = {"openai", "anthropic"}
# ECS refuses a task definition larger than 64 KiB (its "task definition size" quota).
TASK_DEFINITION_MAX_BYTES = 64 * 1024
# Nothing on the response waits for tollgate: no response phase at all.
NO_RESPONSE_PHASE = {"response_header_mode": "SKIP", "response_body_mode": "NONE", "response_trailer_mode": "SKIP"}


def reported_usage_paths() -> dict[str, list[str]]:
    """src/llm/usage.rs's REPORTED_JSON_NUMBERS and REPORTED_EVENT_OBJECTS: what Envoy must copy."""
    source = (REPO / "src" / "llm" / "usage.rs").read_text()
    paths = {}
    for name in ("REPORTED_JSON_NUMBERS", "REPORTED_EVENT_OBJECTS"):
        body = re.search(rf"pub const {name}: &\[&str\] = &\[(.*?)\];", source, re.S)
        paths[name] = re.findall(r'"([^"]+)"', body.group(1)) if body else []
    return paths


def usage_rule_problems(rules: list[dict], wanted: list[str], what: str) -> list[str]:
    """Each wanted dotted path is extracted (selectors = its keys) into tollgate.usage under itself."""
    problems = []
    found = {tuple(s["key"] for s in r.get("selectors", [])): r.get("on_present", {}) for r in rules}
    for path in wanted:
        target = found.get(tuple(path.split(".")))
        if target is None:
            problems.append(f"{what}: no rule extracts {path}")
        elif target.get("metadata_namespace") != "tollgate.usage" or target.get("key") != path:
            problems.append(f"{what}: {path} lands in {target.get('metadata_namespace')}:{target.get('key')}, "
                            f"not tollgate.usage:{path}")
    return problems


@check
def check_fast_attachment(stack: Stack) -> list[str]:
    """envoy_attachment = "fast" renders the fast attachment of envoy/local-fast.yaml (docs/envoy.md)
    into the same ECS Envoy: one synchronous message per request, nothing on the response waiting,
    usage read by Envoy and sent back in the gRPC access log; and the root module passes the
    choice through."""
    problems = []
    if stack.root.modules.get("render", {}).get("envoy_attachment") != "${var.envoy_attachment}":
        problems.append("the root module does not pass var.envoy_attachment to module.render")
    four, fast = envoy_parts(stack.rendered["envoy_yaml"]), envoy_parts(stack.rendered_fast["envoy_yaml"])

    # The same task around it: listener, clusters (tollgate, providers over TLS, JWKS), token check.
    if four["clusters"] != fast["clusters"]:
        problems.append("the fast rendering's clusters differ from the four-phase one's")
    if four["filters"].get(JWT_AUTHN) != fast["filters"].get(JWT_AUTHN):
        problems.append("the fast rendering's jwt_authn differs from the four-phase one's")
    if four["listener"]["address"] != fast["listener"]["address"]:
        problems.append("the fast rendering listens elsewhere")

    # Filter order: the token is checked before tollgate sees the request, the usage filters read
    # the response, and the buffer filter holds the headers until the body was admitted.
    want_order = [JWT_AUTHN, EXT_PROC, "envoy.filters.http.json_to_metadata", "envoy.filters.http.sse_to_metadata",
                  "envoy.filters.http.buffer", "envoy.filters.http.router"]
    if fast["filter_order"] != want_order:
        problems.append(f"fast http_filters are {fast['filter_order']}, want {want_order}: without the buffer filter "
                        "between the admission and the router, a refused request reaches the provider")

    ext = fast["filters"].get(EXT_PROC, {})
    grpc = ext.get("grpc_service", {})
    if grpc.get("envoy_grpc", {}).get("cluster_name") != "tollgate":
        problems.append("the admission does not call the tollgate cluster")
    if {"key": "x-tollgate-attachment", "value": "admission"} not in grpc.get("initial_metadata", []):
        problems.append("the admission does not tell tollgate it is the fast attachment (x-tollgate-attachment: admission)")
    if ext.get("failure_mode_allow") is not False:
        problems.append("the admission must fail closed")
    if ext.get("message_timeout") != four["filters"].get(EXT_PROC, {}).get("message_timeout"):
        problems.append(f"the admission's message_timeout {ext.get('message_timeout')} is not the four-phase one's")
    mode = ext.get("processing_mode", {})
    if {k: mode.get(k) for k in NO_RESPONSE_PHASE} != NO_RESPONSE_PHASE:
        problems.append(f"the admission holds the response: {mode}")
    if mode.get("request_header_mode") != "SEND":
        problems.append("without a body, the admission must see the headers (else the request goes unseen)")
    attributes = set(ext.get("request_attributes", []))
    for a in ("request.method", "request.path", "request.headers['authorization']"):
        if a not in attributes:
            problems.append(f"the admission does not send {a}: one-message requests carry their headers only as attributes")
    metadata = ext.get("metadata_options", {})
    if JWT_AUTHN not in metadata.get("forwarding_namespaces", {}).get("untyped", []):
        problems.append("jwt_authn's payload is not forwarded to tollgate")
    if "tollgate" not in metadata.get("receiving_namespaces", {}).get("untyped", []):
        problems.append("tollgate's dynamic metadata (hand-off key, rate headers) is not received")

    # Every provider route: a one-message twin (requests announcing a body) first, then the plain one.
    by_cluster: dict[str, list[dict]] = {}
    for r in fast["routes"]:
        by_cluster.setdefault(r.get("route", {}).get("cluster"), []).append(r)
    for cluster in sorted(PROVIDER_CLUSTERS):
        routes = by_cluster.get(cluster, [])
        headed = [r for r in routes if any(h.get("name") == "content-length" for h in r["match"].get("headers", []))]
        plain = [r for r in routes if not r["match"].get("headers")]
        if len(headed) != 1 or len(plain) != 1 or routes.index(headed[0]) > routes.index(plain[0]):
            problems.append(f"{cluster}: want one content-length route before one plain route, found {len(routes)} routes")
            continue
        if headed[0]["match"].get("prefix") != plain[0]["match"].get("prefix"):
            problems.append(f"{cluster}: the one-message route's prefix differs from the plain one's")
        regex = headed[0]["match"]["headers"][0].get("string_match", {}).get("safe_regex", {}).get("regex", "")
        if re.fullmatch(regex, "0") or not re.fullmatch(regex, "17"):
            problems.append(f"{cluster}: content-length regex {regex!r} must match a positive length and not 0")
        override = headed[0].get("typed_per_filter_config", {}).get(EXT_PROC, {}).get("overrides", {}).get("processing_mode", {})
        want = {"request_header_mode": "SKIP", "request_body_mode": "BUFFERED", **NO_RESPONSE_PHASE}
        if {k: override.get(k) for k in want} != want:
            problems.append(f"{cluster}: the one-message route's mode is {override}, want {want}")
        for r in (headed[0], plain[0]):
            keep = {k: r.get(k) for k in ("route", "request_headers_to_remove", "request_headers_to_add")}
            twin = next((t for t in four["routes"] if t.get("route", {}).get("cluster") == cluster), {})
            if keep != {k: twin.get(k) for k in keep}:
                problems.append(f"{cluster}: a fast route forwards differently from the four-phase route (key, token, host)")
    health = [r for r in fast["routes"] if r.get("route", {}).get("cluster") == "tollgate_http"]
    if len(health) != 1 or not health[0].get("typed_per_filter_config", {}).get(EXT_PROC, {}).get("disabled"):
        problems.append("the health route must bypass the admission")

    # Response headers from the admission's metadata; the body uncompressed, so Envoy can read usage.
    if "accept-encoding" not in fast["vhost"].get("request_headers_to_remove", []):
        problems.append("accept-encoding is not removed: a compressed answer's usage cannot be read")
    added = {h["header"]["key"]: h["header"]["value"] for h in fast["vhost"].get("response_headers_to_add", [])}
    for header in ("x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset", "x-tollgate-budget-warning"):
        if added.get(header) != f"%DYNAMIC_METADATA(tollgate:{header})%":
            problems.append(f"response header {header} is not formatted from tollgate's metadata")

    # Usage: every path tollgate reads.
    wanted = reported_usage_paths()
    if len(wanted["REPORTED_JSON_NUMBERS"]) < 5 or not wanted["REPORTED_EVENT_OBJECTS"]:
        problems.append("src/llm/usage.rs: REPORTED_JSON_NUMBERS / REPORTED_EVENT_OBJECTS not found")
    json_rules = fast["filters"].get("envoy.filters.http.json_to_metadata", {}).get("response_rules", {}).get("rules", [])
    problems += usage_rule_problems(json_rules, wanted["REPORTED_JSON_NUMBERS"], "json_to_metadata")
    parser = fast["filters"].get("envoy.filters.http.sse_to_metadata", {}).get("response_rules", {}).get("content_parser", {})
    sse_rules = [r.get("rule", {}) for r in parser.get("typed_config", {}).get("rules", [])]
    problems += usage_rule_problems(sse_rules, wanted["REPORTED_EVENT_OBJECTS"], "sse_to_metadata")

    # The charge: an access-log entry per admitted request, to tollgate's gRPC port.
    logs = [a for a in fast["hcm"].get("access_log", []) if a.get("name") == "envoy.access_loggers.http_grpc"]
    log = one(logs, "gRPC access log", problems) or {}
    common = log.get("typed_config", {}).get("common_config", {})
    if common.get("grpc_service", {}).get("envoy_grpc", {}).get("cluster_name") != "tollgate":
        problems.append("the access log does not go to the tollgate cluster")
    if common.get("transport_api_version") != "V3":
        problems.append("the access log must use transport_api_version V3")
    matcher = log.get("filter", {}).get("metadata_filter", {}).get("matcher", {})
    if matcher.get("filter") != "tollgate" or matcher.get("path") != [{"key": "handoff"}]:
        problems.append("the access log must report the requests tollgate parked (tollgate:handoff present)")

    # The task definition that carries it (Envoy's bootstrap is on its command line).
    problems += botocore_problems(stack.rendered_fast["container_definitions"])
    for rendered in (stack.rendered, stack.rendered_fast):
        size = len(rendered["container_definitions_json"].encode())
        if size > TASK_DEFINITION_MAX_BYTES - 8192:
            problems.append(f"the container definitions take {size} bytes: too close to ECS's task definition "
                            f"limit ({TASK_DEFINITION_MAX_BYTES} bytes) for the rest of the task definition")

    # And the four-phase rendering has none of it: its response phase is held.
    if four["hcm"].get("access_log") or "envoy.filters.http.buffer" in four["filters"]:
        problems.append("the four-phase rendering carries the fast attachment's access log or buffer filter")
    four_mode = four["filters"].get(EXT_PROC, {}).get("processing_mode", {})
    if four_mode.get("response_body_mode") != "STREAMED" or four_mode.get("response_header_mode") != "SEND":
        problems.append(f"the four-phase rendering does not hold the response: {four_mode}")
    return problems


@check
def check_usage_filter_pattern(stack: Stack) -> list[str]:
    """The subscription filter selects exactly agentgateway's LLM records in the fixture."""
    from cwl_filter import matches

    problems = []
    pattern = stack.rendered["usage_log_filter_pattern"]
    events = json.loads((REPO / "tests" / "events" / "cloudwatch-logs-usage.payload.json").read_text())["logEvents"]
    for e in events:
        try:
            record = json.loads(e["message"])
        except ValueError:
            record = None
        want = isinstance(record, dict) and "gen_ai.usage.input_tokens" in record
        if matches(pattern, e["message"]) != want:
            problems.append(f"pattern {pattern} {'misses' if want else 'selects'} event {e['id']}")
    return problems
