"""release/preflight.sh against moto's EC2 and RDS (issue 96): a good
network passes, and each broken shape an adopter meets is found, with its
fix, before a deploy: subnets with no way to S3 or the services, an
internet gateway as the way out, the stack's endpoints clashing with the
VPC's own private DNS or not admitted on 443, the database's security group
not admitting the functions', the database in another VPC. The AWS CLI the
release's PATH holds runs the script, as an adopter's would."""

from __future__ import annotations

import os
import pathlib
import socket
import subprocess
import time

import boto3
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "release" / "preflight.sh"
VENV = pathlib.Path(os.environ.get("VENV", ROOT / ".venv"))
LS_VENV = pathlib.Path(os.environ.get("LS_VENV", ROOT / ".venv-localstack"))
REGION = "eu-west-1"  # not us-east-1: the AWS CLI v1 sends rds there to rds.amazonaws.com whatever AWS_ENDPOINT_URL says


@pytest.fixture(scope="module")
def moto():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([VENV / "bin" / "moto_server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        # Serving once it answers a request (its state, not a delay).
        for _ in range(600):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert server.poll() is None, "moto_server exited"
                time.sleep(0.05)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=10)


def clients(url):
    kw = dict(endpoint_url=url, region_name=REGION, aws_access_key_id="test", aws_secret_access_key="test")
    return boto3.client("ec2", **kw), boto3.client("rds", **kw)


class Network:
    """A VPC with two private subnets, the functions' security group, and
    an RDS instance in the VPC whose group admits the functions' on 5432.
    `nat`: the subnets' way out is a NAT gateway; without it, no way out
    and no endpoint."""

    def __init__(self, url, cidr, nat=True, s3_gateway=False):
        self.url = url
        ec2, rds = self.ec2, self.rds = clients(url)
        self.vpc = ec2.create_vpc(CidrBlock=cidr)["Vpc"]["VpcId"]
        base = cidr.rsplit(".", 2)[0]
        self.subnets = [ec2.create_subnet(VpcId=self.vpc, CidrBlock=f"{base}.{i}.0/24",
                                          AvailabilityZone=f"{REGION}{z}")["Subnet"]["SubnetId"]
                        for i, z in ((1, "a"), (2, "b"))]  # fmt: skip
        self.table = ec2.create_route_table(VpcId=self.vpc)["RouteTable"]["RouteTableId"]
        for s in self.subnets:
            ec2.associate_route_table(RouteTableId=self.table, SubnetId=s)
        if nat:
            public = ec2.create_subnet(VpcId=self.vpc, CidrBlock=f"{base}.9.0/24")["Subnet"]["SubnetId"]
            eip = ec2.allocate_address(Domain="vpc")["AllocationId"]
            nat_id = ec2.create_nat_gateway(SubnetId=public, AllocationId=eip)["NatGateway"]["NatGatewayId"]
            ec2.create_route(RouteTableId=self.table, DestinationCidrBlock="0.0.0.0/0", NatGatewayId=nat_id)
        if s3_gateway:
            ec2.create_vpc_endpoint(VpcId=self.vpc, ServiceName=f"com.amazonaws.{REGION}.s3",
                                    VpcEndpointType="Gateway", RouteTableIds=[self.table])  # fmt: skip
        self.function_sg = self.group("functions")
        self.db_sg = self.group("database")
        self.admit(self.db_sg, 5432, self.function_sg)
        rds.create_db_subnet_group(DBSubnetGroupName=f"db-{self.vpc}", DBSubnetGroupDescription="db",
                                   SubnetIds=self.subnets)  # fmt: skip
        db = rds.create_db_instance(DBInstanceIdentifier=f"db-{self.vpc[-8:]}", Engine="postgres",
                                    DBInstanceClass="db.t4g.micro", MasterUsername="master",
                                    MasterUserPassword="password1", DBSubnetGroupName=f"db-{self.vpc}",
                                    VpcSecurityGroupIds=[self.db_sg], AllocatedStorage=20)["DBInstance"]  # fmt: skip
        self.db_host = db["Endpoint"]["Address"]

    def group(self, name):
        return self.ec2.create_security_group(GroupName=f"{name}-{self.vpc}", Description=name,
                                              VpcId=self.vpc)["GroupId"]  # fmt: skip

    def admit(self, group, port, source):
        self.ec2.authorize_security_group_ingress(GroupId=group, IpPermissions=[{
            "IpProtocol": "tcp", "FromPort": port, "ToPort": port, "UserIdGroupPairs": [{"GroupId": source}]}])  # fmt: skip

    def endpoint(self, service, groups, stack=None):
        """An interface endpoint with private DNS; `stack`: made by that
        stack (CloudFormation's tag on what it makes)."""
        tags = [{"ResourceType": "vpc-endpoint", "Tags": [{"Key": "aws:cloudformation:stack-name", "Value": stack}]}]
        return self.ec2.create_vpc_endpoint(VpcId=self.vpc, ServiceName=f"com.amazonaws.{REGION}.{service}",
                                            VpcEndpointType="Interface", SubnetIds=self.subnets,
                                            SecurityGroupIds=groups, PrivateDnsEnabled=True,
                                            **({"TagSpecifications": tags} if stack else {}))["VpcEndpoint"]["VpcEndpointId"]  # fmt: skip

    def params(self, **extra):
        return {"SubnetIds": ",".join(self.subnets), "SecurityGroupIds": self.function_sg,
                "DbHost": self.db_host, **extra}  # fmt: skip

    def preflight(self, *flags, **extra):
        env = {"PATH": f"{LS_VENV / 'bin'}:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp"),
               "AWS_ENDPOINT_URL": self.url, "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
               "AWS_REGION": REGION, "AWS_DEFAULT_REGION": REGION}  # fmt: skip
        args = [f"{k}={v}" for k, v in self.params(**extra).items()]
        done = subprocess.run(["bash", SCRIPT, *flags, *args], env=env, capture_output=True, text=True, timeout=120)
        assert "Traceback" not in done.stderr, done.stderr
        return done.returncode, done.stdout + done.stderr


def findings(out):
    return [line for line in out.splitlines() if line.startswith("FAIL")]


def test_a_network_with_a_nat_gateway_and_an_admitting_database_passes(moto):
    net = Network(moto, "10.1.0.0/16")
    rc, out = net.preflight()
    assert rc == 0 and not findings(out), out
    assert out.count("ok    ") == 3, out  # both subnets' way out, the database
    assert "the network is ready" in out


def test_private_subnets_with_no_way_out_name_each_service_and_its_endpoint(moto):
    net = Network(moto, "10.2.0.0/16", nat=False)
    rc, out = net.preflight()
    assert rc == 1, out
    fails = findings(out)
    assert len([f for f in fails if "no route to S3" in f]) == 2, out  # each subnet
    for service in ("secretsmanager", "sqs", "kms"):
        (line,) = [f for f in fails if f.startswith(f"FAIL  {service}:")]
        assert "no endpoint" in line
        assert f"--service-name com.amazonaws.{REGION}.{service}" in out
    assert f"aws ec2 create-vpc-endpoint --vpc-id {net.vpc} --service-name com.amazonaws.{REGION}.s3 --route-table-ids {net.table}" in out
    # The stack's endpoints and an S3 gateway: every finding gone, once the
    # functions' group admits itself on 443.
    net.ec2.create_vpc_endpoint(VpcId=net.vpc, ServiceName=f"com.amazonaws.{REGION}.s3",
                                VpcEndpointType="Gateway", RouteTableIds=[net.table])  # fmt: skip
    rc, out = net.preflight(VpcEndpointsVpcId=net.vpc)
    assert findings(out) == [f for f in findings(out) if "admit themselves on 443" in f] != [], out
    assert f"--group-id {net.function_sg} --protocol tcp --port 443 --source-group {net.function_sg}" in out
    net.admit(net.function_sg, 443, net.function_sg)
    rc, out = net.preflight(VpcEndpointsVpcId=net.vpc)
    assert rc == 0 and not findings(out), out


def test_an_internet_gateway_is_no_way_out_for_a_function(moto):
    net = Network(moto, "10.3.0.0/16", nat=False, s3_gateway=True)
    igw = net.ec2.create_internet_gateway()["InternetGateway"]["InternetGatewayId"]
    net.ec2.attach_internet_gateway(InternetGatewayId=igw, VpcId=net.vpc)
    net.ec2.create_route(RouteTableId=net.table, DestinationCidrBlock="0.0.0.0/0", GatewayId=igw)
    rc, out = net.preflight()
    assert rc == 1, out
    assert len([f for f in findings(out) if f"goes to an internet gateway ({igw})" in f]) == 2, out
    assert "NAT gateway" in out


def test_the_stacks_endpoints_clash_with_the_vpcs_own_private_dns(moto):
    net = Network(moto, "10.4.0.0/16", nat=False, s3_gateway=True)
    net.admit(net.function_sg, 443, net.function_sg)
    own = net.endpoint("secretsmanager", [net.function_sg])
    rc, out = net.preflight(VpcEndpointsVpcId=net.vpc)
    assert rc == 1
    (clash,) = findings(out)
    assert "secretsmanager" in clash and own in clash, out
    assert "leave VpcEndpointsVpcId empty" in out
    # Without the stack's, the VPC's own endpoint serves; sqs and kms have none.
    rc, out = net.preflight()
    assert [f.split(":")[0] for f in findings(out)] == ["FAIL  sqs", "FAIL  kms"], out
    assert f"ok    secretsmanager: the VPC's endpoint {own}" in out


def test_an_update_takes_the_stacks_own_endpoints_for_its_own(moto):
    """deploy.sh names its stack: the endpoints that stack made (its
    CloudFormation tag) are no clash on its update; another stack's are."""
    net = Network(moto, "10.10.0.0/16", nat=False, s3_gateway=True)
    net.admit(net.function_sg, 443, net.function_sg)
    for service in ("secretsmanager", "sqs", "kms"):
        net.endpoint(service, [net.function_sg], stack="login-etl-prod")
    rc, out = net.preflight("--stack-name", "login-etl-prod", VpcEndpointsVpcId=net.vpc)
    assert rc == 0 and not findings(out), out
    rc, out = net.preflight("--stack-name", "login-etl-staging", VpcEndpointsVpcId=net.vpc)
    assert rc == 1 and len(findings(out)) == 3, out


def test_the_vpcs_own_endpoint_must_admit_the_functions_on_443(moto):
    net = Network(moto, "10.5.0.0/16", nat=False, s3_gateway=True)
    closed = net.group("endpoints")
    for service in ("secretsmanager", "sqs", "kms"):
        net.endpoint(service, [closed])
    rc, out = net.preflight()
    assert rc == 1 and len(findings(out)) == 3, out
    assert all("does not admit the functions' security groups on 443" in f for f in findings(out))
    net.admit(closed, 443, net.function_sg)
    rc, out = net.preflight()
    assert rc == 0, out


def test_a_database_that_does_not_admit_the_functions_is_found_with_the_rule_to_add(moto):
    net = Network(moto, "10.6.0.0/16")
    other = net.group("other")
    rc, out = net.preflight(SecurityGroupIds=other)
    assert rc == 1
    (line,) = findings(out)
    assert "do not admit the functions'" in line and "on 5432" in line, out
    assert f"aws ec2 authorize-security-group-ingress --group-id {net.db_sg} --protocol tcp --port 5432 --source-group {other}" in out
    # The subnets' addresses admitted instead of a group: admitted.
    net.ec2.authorize_security_group_ingress(GroupId=net.db_sg, IpPermissions=[{
        "IpProtocol": "tcp", "FromPort": 5432, "ToPort": 5432, "IpRanges": [{"CidrIp": "10.6.0.0/20"}]}])  # fmt: skip
    rc, out = net.preflight(SecurityGroupIds=other)
    assert rc == 0, out


def test_a_database_in_another_vpc_is_found(moto):
    here = Network(moto, "10.7.0.0/16")
    there = Network(moto, "10.8.0.0/16")
    rc, out = here.preflight(DbHost=there.db_host)
    assert rc == 1
    (line,) = findings(out)
    assert there.vpc in line and here.vpc in line and "cannot reach it" in line, out
    assert f"Name=vpc-id,Values={there.vpc}" in out


def test_without_subnets_nothing_is_checked_and_a_bad_argument_is_refused():
    done = subprocess.run(["bash", SCRIPT, "DbHost=x"], capture_output=True, text=True)
    assert done.returncode == 0 and "outside a VPC" in done.stdout
    done = subprocess.run(["bash", SCRIPT, "--subnets"], capture_output=True, text=True)
    assert done.returncode == 2 and "NAME=VALUE" in done.stderr


def test_deploy_sh_runs_it_first_and_a_finding_deploys_nothing(moto, tmp_path):
    """A release's deploy.sh with SubnetIds checks the network before
    anything is made: the broken network stops it, and no stack exists."""
    net = Network(moto, "10.9.0.0/16", nat=False)
    (tmp_path / "template.yaml").write_text("Resources:\n  ReleaseFiles: {}\n")
    for name in ("deploy.sh", "preflight.sh", "deployer-policy.json"):
        (tmp_path / name).write_bytes((ROOT / "release" / name).read_bytes())
    env = {"PATH": f"{LS_VENV / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path), "AWS_ENDPOINT_URL": moto,
           "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": REGION}  # fmt: skip
    args = [f"{k}={v}" for k, v in net.params().items()]
    done = subprocess.run(["bash", tmp_path / "deploy.sh", "--stack-name", "login-etl-preflight", *args],
                          env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    assert "no route to S3" in done.stdout and "nothing was deployed" in done.stderr
    cfn = boto3.client("cloudformation", endpoint_url=moto, region_name=REGION, aws_access_key_id="test",
                       aws_secret_access_key="test")  # fmt: skip
    assert cfn.list_stacks()["StackSummaries"] == [], "a stack was made"
