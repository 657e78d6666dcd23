"""template.yaml's observability resources (cfn-lint checks the rest): log
groups with a retention wired to each function, a dashboard whose body is
valid JSON and names only metrics the gateway publishes, and the alarms."""

import json
import os
import re

import yaml

from conftest import ROOT

# What src/stats/emf.rs publishes.
EMF_METRICS = {"Requests", "Rejected", "GatewayErrors", "UpstreamErrors", "Latency", "TimeToFirstByte",
               "InputTokens", "OutputTokens", "CachedInputTokens", "CostUSD"}


class Loader(yaml.SafeLoader):
    pass


def _tag(loader, suffix, node):
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    return {suffix: value}


Loader.add_multi_constructor("!", _tag)


def template():
    with open(os.path.join(ROOT, "template.yaml")) as f:
        return yaml.load(f, Loader=Loader)


def test_each_function_logs_to_a_group_with_a_retention():
    t = template()
    resources = t["Resources"]
    assert t["Parameters"]["LogRetentionDays"]["Default"] == 30
    for function, group in [("GatewayFunction", "GatewayLogGroup"), ("GatewayApiFunction", "GatewayApiLogGroup")]:
        logging = resources[function]["Properties"]["LoggingConfig"]
        assert logging["LogGroup"] == {"Ref": group}, logging
        assert resources[group]["Type"] == "AWS::Logs::LogGroup"
        assert resources[group]["Properties"]["RetentionInDays"] == {"Ref": "LogRetentionDays"}


def test_the_dashboard_shows_the_published_metrics():
    t = template()
    body, names = t["Resources"]["GatewayDashboard"]["Properties"]["DashboardBody"]["Sub"]
    assert names == {"Ns": {"Ref": "MetricsNamespace"}}
    text = body.replace("${AWS::Region}", "us-east-1").replace("${Ns}", "ChatGptGateway")
    assert "${" not in text, "every substitution is defined"
    dashboard = json.loads(text)
    shown = set()
    for widget in dashboard["widgets"]:
        for metric in widget["properties"]["metrics"]:
            if isinstance(metric[0], dict):
                shown |= set(re.findall(r'MetricName=\\?"(\w+)', metric[0]["expression"]))
            else:
                assert metric[0] == "ChatGptGateway"
                shown.add(metric[1])
    assert shown <= EMF_METRICS, shown - EMF_METRICS
    assert {"Requests", "Rejected", "GatewayErrors", "UpstreamErrors", "Latency", "TimeToFirstByte",
            "InputTokens", "OutputTokens", "CostUSD"} <= shown


def test_alarms_watch_errors_and_spend_and_can_mail():
    resources = template()["Resources"]
    errors = resources["ErrorsAlarm"]["Properties"]
    watched = {m["MetricStat"]["Metric"]["MetricName"] for m in errors["Metrics"] if "MetricStat" in m}
    assert watched == {"GatewayErrors", "UpstreamErrors"}
    assert errors["Threshold"] == {"Ref": "ErrorAlarmThreshold"}
    cost = resources["CostAlarm"]
    assert cost["Condition"] == "HasCostAlarm" and cost["Properties"]["MetricName"] == "CostUSD"
    assert cost["Properties"]["Period"] == 86400
    assert resources["AlarmTopic"]["Condition"] == "HasAlarmEmail"
    assert resources["AlarmTopic"]["Properties"]["Subscription"][0]["Protocol"] == "email"
