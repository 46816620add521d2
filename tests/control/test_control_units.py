"""Pure parts of control, without a socket: parameters, filters, XML, the dispatch table."""

from __future__ import annotations

import pytest

from control.api.dispatch import ACTIONS, handler_for
from control.api.params import Params, filters
from control.api.xml import Members, error_document, namespace, response_document
from control.errors import Ec2Error


def test_params_lists_and_structures_follow_their_indexes():
    p = Params({"KeyName.2": "b", "KeyName.10": "c", "KeyName.1": "a",
                "IpPermissions.1.IpProtocol": "tcp", "IpPermissions.1.IpRanges.1.CidrIp": "10.0.0.0/8",
                "IpPermissions.3.IpProtocol": "udp"})
    assert p.list("KeyName") == ["a", "b", "c"]
    perms = p.items("IpPermissions")
    assert [x.get("IpProtocol") for x in perms] == ["tcp", "udp"]
    assert perms[0].items("IpRanges")[0].get("CidrIp") == "10.0.0.0/8"
    with pytest.raises(Ec2Error) as e:
        Params({"FromPort": "x"}).int("FromPort")
    assert e.value.code == "InvalidParameterValue"
    with pytest.raises(Ec2Error) as e:
        Params({}).required("KeyName")
    assert e.value.code == "MissingParameter"


def test_filters_with_wildcards_and_unknown_names():
    (f,) = filters(Params({"Filter.1.Name": "key-name", "Filter.1.Value.1": "web-*", "Filter.1.Value.2": "d?b"}),
                   {"key-name"})
    assert f.matches("web-1") and f.matches("db1") is False and f.matches("dab") and not f.matches("xweb-")
    (lit,) = filters(Params({"Filter.1.Name": "key-name", "Filter.1.Value.1": r"a\*"}), {"key-name"})
    assert lit.matches("a*") and not lit.matches("ab")
    with pytest.raises(Ec2Error):
        filters(Params({"Filter.1.Name": "nope", "Filter.1.Value.1": "x"}), {"key-name"})


def test_xml_documents():
    doc = response_document("DescribeThings", "2014-06-15", "rid-1",
                            {"thingSet": [{"name": "a<b", "on": True, "gone": None}],
                             "certs": Members([{"x": 1}])}).decode()
    assert 'xmlns="http://ec2.amazonaws.com/doc/2014-06-15/"' in doc
    assert "<requestId>rid-1</requestId>" in doc
    assert "<thingSet><item><name>a&lt;b</name><on>true</on></item></thingSet>" in doc
    assert "<certs><member><x>1</x></member></certs>" in doc
    assert namespace('"><evil') == "http://ec2.amazonaws.com/doc/2016-11-15/"
    err = error_document("InvalidAction", "no", "rid-2").decode()
    assert "<Response><Errors><Error><Code>InvalidAction</Code><Message>no</Message></Error></Errors>" \
           "<RequestID>rid-2</RequestID></Response>" in err


def test_dispatch_table():
    assert handler_for("RunRocket") is None
    assert {"CreateKeyPair", "ImportKeyPair", "DescribeKeyPairs", "DeleteKeyPair", "CreateSecurityGroup",
            "DeleteSecurityGroup", "DescribeSecurityGroups", "AuthorizeSecurityGroupIngress",
            "AuthorizeSecurityGroupEgress", "RevokeSecurityGroupIngress", "RevokeSecurityGroupEgress",
            "CreateTags", "DeleteTags", "DescribeTags", "DescribeRegions", "DescribeAvailabilityZones",
            "DescribeInstanceTypes", "DescribeServiceCertificates", "RegisterImage", "DescribeImages",
            "DescribeImageAttribute", "ModifyImageAttribute", "ResetImageAttribute", "DeregisterImage",
            "RunInstances", "DescribeInstances", "DescribeInstanceStatus", "TerminateInstances",
            "RebootInstances", "StopInstances", "StartInstances", "GetConsoleOutput", "AllocateAddress",
            "AssociateAddress", "DisassociateAddress", "ReleaseAddress", "DescribeAddresses"} == set(ACTIONS)
