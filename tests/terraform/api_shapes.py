"""The ALB listener rules and the WAF web ACL, translated from HCL to the AWS API's own request
shapes (elbv2 CreateRule / CreateListener, wafv2 CreateWebACL) and validated against botocore's
service models: types, required members and enum values. The provider's schema leaves WAF rule
statements untyped, so this is where their structure is checked."""

from __future__ import annotations

import re
from typing import Any

from hcl import blocks

PLACEHOLDER_ARN = {
    "target_group_arn": "arn:aws:elasticloadbalancing:eu-west-1:123456789012:targetgroup/tollgate/0123456789abcdef",
    "listener_arn": "arn:aws:elasticloadbalancing:eu-west-1:123456789012:listener/app/tollgate/0123456789abcdef/0123456789abcdef",
}

# snake_case HCL name -> API member, where it is not the plain PascalCase of it.
API_NAMES = {
    "cloudwatch_metrics_enabled": "CloudWatchMetricsEnabled",
    "rule": "Rules",
    "rule_action_override": "RuleActionOverrides",
    "excluded_rule": "ExcludedRules",
    "jwt_validation": "JwtValidationConfig",
    "fixed_response": "FixedResponseConfig",
    "redirect": "RedirectConfig",
    "forward": "ForwardConfig",
    "additional_claim": "AdditionalClaims",
    "target_group": "TargetGroups",
}
LISTS = {"Rules", "RuleActionOverrides", "ExcludedRules", "AdditionalClaims", "TargetGroups"}


def pascal(name: str) -> str:
    return API_NAMES.get(name) or "".join(p.title() for p in name.split("_"))


class Unresolved(Exception):
    pass


def interpolate(value: Any, env: dict[str, Any]) -> Any:
    """Substitute ${a.b.c} references found in env; a whole-value reference keeps its type."""
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def lookup(path: str) -> Any:
        node: Any = env
        for part in path.strip().split("."):
            if not isinstance(node, dict) or part not in node:
                raise Unresolved(path)
            node = node[part]
        return node

    whole = re.fullmatch(r"\$\{([\w.\-]+)\}", value)
    if whole:
        return interpolate(lookup(whole.group(1)), env)
    return re.sub(r"\$\{([\w.\-]+)\}", lambda m: str(interpolate(lookup(m.group(1)), env)), value)


def to_api(body: dict, env: dict[str, Any]) -> dict:
    """A normalized HCL body (blocks as lists of dicts, dynamic blocks with for_each over values
    env knows) as an API structure."""
    out: dict[str, Any] = {}
    for key, value in body.items():
        is_block = isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)
        if key in ("dynamic", "tags") or (key in ("for_each", "depends_on", "count", "lifecycle") and not is_block):
            continue
        name = pascal(key)
        if is_block:
            items = [to_api(v, env) for v in value]
            out[name] = items if name in LISTS else items[0]
        else:
            try:
                out[name] = interpolate(value, env)
            except Unresolved:
                if not key.endswith("_arn"):
                    raise
                out[name] = PLACEHOLDER_ARN.get(key, PLACEHOLDER_ARN["target_group_arn"])
    for dyn in body.get("dynamic", []):
        for key, spec in dyn.items():
            name = pascal(key)
            iterations = interpolate(spec["for_each"], env)
            items = []
            pairs = iterations.items() if isinstance(iterations, dict) else enumerate(iterations)
            for k, v in pairs:
                scope = {**env, key: {"key": k, "value": v}}
                items.extend(to_api(c, scope) for c in spec.get("content", []))
            if items and name in LISTS:
                out[name] = out.get(name, []) + items
            elif items:
                out[name] = items[0]
    return out


def validate(service: str, operation: str, params: dict) -> list[str]:
    import botocore.session
    from botocore.validate import ParamValidator

    model = botocore.session.get_session().get_service_model(service)
    shape = model.operation_model(operation).input_shape
    problems = []
    report = ParamValidator().validate(params, shape)
    if report.has_errors():
        problems.append(f"{service} {operation}: {report.generate_report()}")
    problems.extend(f"{service} {operation}: {p}" for p in enum_problems(shape, params, operation))
    return problems


def enum_problems(shape, value, path: str) -> list[str]:
    """botocore checks types and required members, not enums: this does."""
    problems = []
    if shape.type_name == "structure" and isinstance(value, dict):
        for k, v in value.items():
            if k in shape.members:
                problems += enum_problems(shape.members[k], v, f"{path}.{k}")
    elif shape.type_name == "list" and isinstance(value, list):
        for i, v in enumerate(value):
            problems += enum_problems(shape.member, v, f"{path}[{i}]")
    elif shape.type_name == "string" and shape.enum and isinstance(value, str) and value not in shape.enum:
        problems.append(f"{path} = {value!r}, not one of {shape.enum}")
    return problems


def elb_action(action: dict, env: dict) -> dict:
    api = to_api(action, env)
    if "Order" in api:
        api["Order"] = int(api["Order"])
    return api


CONDITION_FIELDS = {
    "path_pattern": ("path-pattern", "PathPatternConfig"),
    "http_request_method": ("http-request-method", "HttpRequestMethodConfig"),
    "host_header": ("host-header", "HostHeaderConfig"),
}


def elb_rule_params(rule: dict, env: dict) -> dict:
    conditions = []
    for cond in blocks(rule, "condition"):
        for key, (field, config) in CONDITION_FIELDS.items():
            for c in blocks(cond, key):
                conditions.append({"Field": field, config: {"Values": [interpolate(v, env) for v in c.get("values", [])]}})
    return {
        "ListenerArn": PLACEHOLDER_ARN["listener_arn"],
        "Conditions": conditions,
        "Priority": int(rule.get("priority", 1)),
        "Actions": [elb_action(a, env) for a in blocks(rule, "action")],
    }


def env_of(stack) -> dict:
    """What interpolate() can resolve offline: variable defaults, locals, module.render's outputs."""
    return {
        "var": {k: v.get("default") for k, v in stack.root.variables.items()},
        "local": stack.root.locals,
        "module": {"render": stack.rendered},
    }


def shape_problems(stack) -> list[str]:
    env = env_of(stack)
    problems: list[str] = []
    try:
        for name, rule in stack.root.of_type("aws_lb_listener_rule").items():
            problems += [f"aws_lb_listener_rule.{name}: {p}" for p in validate("elbv2", "CreateRule", elb_rule_params(rule, env))]
        for name, listener in stack.root.of_type("aws_lb_listener").items():
            params = {
                "LoadBalancerArn": PLACEHOLDER_ARN["listener_arn"].replace(":listener/", ":loadbalancer/"),
                "Protocol": listener.get("protocol"),
                "Port": int(listener.get("port")),
                "DefaultActions": [elb_action(a, env) for a in blocks(listener, "default_action")],
            }
            if listener.get("ssl_policy"):
                params["SslPolicy"] = interpolate(listener["ssl_policy"], env)
            problems += [f"aws_lb_listener.{name}: {p}" for p in validate("elbv2", "CreateListener", params)]
        for name, acl in stack.root.of_type("aws_wafv2_web_acl").items():
            params = to_api(acl, env)
            params["Name"] = interpolate(acl["name"], env)
            params.pop("Tags", None)
            problems += [f"aws_wafv2_web_acl.{name}: {p}" for p in validate("wafv2", "CreateWebACL", params)]
        for name, conf in stack.root.of_type("aws_wafv2_web_acl_logging_configuration").items():
            logging = {
                "ResourceArn": "arn:aws:wafv2:eu-west-1:123456789012:regional/webacl/tollgate/0123",
                "LogDestinationConfigs": ["arn:aws:logs:eu-west-1:123456789012:log-group:aws-waf-logs-tollgate"],
                "RedactedFields": [to_api(f, env) for f in blocks(conf, "redacted_fields")],
            }
            problems += [f"aws_wafv2_web_acl_logging_configuration.{name}: {p}"
                         for p in validate("wafv2", "PutLoggingConfiguration", {"LoggingConfiguration": logging})]
    except Unresolved as e:
        problems.append(f"cannot resolve ${{{e}}} offline")
    return problems
