#!/usr/bin/env bash
# The network a deploy needs, checked in seconds, before the deploy
# (deploy.sh runs it when SubnetIds is given; or by hand):
#
#   bash preflight.sh [--stack-name NAME] SubnetIds=subnet-a,subnet-b SecurityGroupIds=sg-f \
#     DbHost=mydb.xxxx.us-east-1.rds.amazonaws.com [DbPort=5432] [DbProxyHost=…] [VpcEndpointsVpcId=vpc-v]
#
# The deploy's own parameter overrides (others are ignored). Read through
# the EC2 and RDS APIs with the AWS CLI alone (`aws ec2 describe-*`, `aws
# rds describe-*`), it names what would make the setup's answer to
# CloudFormation time out (no route to S3) or the functions fail: a subnet
# with no way to Secrets Manager, SQS, KMS or S3 (a NAT gateway, or an
# endpoint); the stack's endpoints (VpcEndpointsVpcId) clashing with the
# VPC's own private DNS, or not admitted by their security group on 443;
# the database's security group not admitting the functions' on its port;
# the database in another VPC. Each finding names its fix. Exit 1 on any
# finding, 2 on a usage error or a call that could not be made. With
# --stack-name (deploy.sh gives it), that stack's own endpoints are its,
# not the VPC's: an update is no clash.
set -euo pipefail
say() { echo "$*"; }
found=0
fail() { found=$((found + 1)); echo "FAIL  $1"; echo "      fix: $2"; }
usage() { sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; }
# A call that fails: what it said, and exit 2 (not a finding).
cannot() { echo "preflight.sh: $1 failed: $(tail -n 3 "$err" | tr '\n' ' '); check the credentials and that they may call it (deployer-policy.json)" >&2; exit 2; }
err=$(mktemp); trap 'rm -f "$err"' EXIT

declare -A p=()
stack=""
while [ $# -gt 0 ]; do
  case $1 in
    -h | --help) usage; exit 0 ;;
    --stack-name) stack=${2:-}; shift 2 || { echo "preflight.sh: --stack-name needs a name" >&2; exit 2; }; continue ;;
    *=*) p[${1%%=*}]=${1#*=} ;;
    *) echo "preflight.sh: $1 is not NAME=VALUE (see --help)" >&2; exit 2 ;;
  esac
  shift
done
subnets=${p[SubnetIds]:-} groups=${p[SecurityGroupIds]:-}
host=${p[DbHost]:-} port=${p[DbPort]:-5432} endpoints_vpc=${p[VpcEndpointsVpcId]:-}
# Behind a proxy the functions reach the proxy: its group must admit them.
[ -z "${p[DbProxyHost]:-}" ] || { host=${p[DbProxyHost]}; port=${p[DbProxyPort]:-5432}; }
host=${host,,}
[[ $host =~ ^[a-z0-9.-]*$ ]] || { echo "preflight.sh: DbHost/DbProxyHost '$host' is no host name" >&2; exit 2; }
if [ -z "$subnets" ]; then
  say "preflight: no SubnetIds: the functions run outside a VPC, and reach every service over the internet; nothing to check"
  exit 0
fi
[ -n "$groups" ] || { echo "preflight.sh: SubnetIds without SecurityGroupIds: give both (the functions' network)" >&2; exit 2; }
region=${AWS_REGION:-${AWS_DEFAULT_REGION:-$(aws configure get region 2> /dev/null || true)}}
[ -n "$region" ] || { echo "preflight.sh: no region: set AWS_REGION" >&2; exit 2; }
# The AWS CLI v1 reads AWS_DEFAULT_REGION alone.
export AWS_DEFAULT_REGION=$region
# Text output with '|' between fields: an empty field stays a field.
q() { aws "$@" --output text 2> "$err" | tr '\t' '|'; return "${PIPESTATUS[0]}"; }

first() { echo "${1%%,*}"; }
ip2int() { local IFS=.; read -r a b c d <<< "$1"; echo $(((a << 24) + (b << 16) + (c << 8) + d)); }
# Whether CIDR $1 holds every address of CIDR $2.
covers() {
  local outer=${1%/*} olen=${1#*/} inner=${2%/*} ilen=${2#*/} mask
  [ "$ilen" -ge "$olen" ] || return 1
  mask=$(((0xFFFFFFFF << (32 - olen)) & 0xFFFFFFFF))
  [ "$olen" -eq 0 ] && mask=0
  [ $(($(ip2int "$outer") & mask)) -eq $(($(ip2int "$inner") & mask)) ]
}

# --- the subnets and their VPC ---
IFS=, read -r -a subnet_ids <<< "$subnets"
IFS=, read -r -a group_ids <<< "$groups"
subnet_list=$(IFS=,; echo "${subnet_ids[*]}")
group_list=$(IFS=,; echo "${group_ids[*]}")
if ! rows=$(q ec2 describe-subnets --subnet-ids "${subnet_ids[@]}" --query 'Subnets[].[SubnetId,VpcId,CidrBlock]'); then
  # A subnet that is not there is a finding; no right to look, a call that could not be made.
  grep -q "InvalidSubnetID" "$err" || cannot "aws ec2 describe-subnets"
  fail "the subnets $subnets could not be read: $(tail -n 1 "$err")" \
    "give SubnetIds of this account and region ($region): aws ec2 describe-subnets --query 'Subnets[].[SubnetId,VpcId,AvailabilityZone]'"
  exit 1
fi
declare -A cidr_of=() vpcs=()
while IFS='|' read -r id vpc cidr; do cidr_of[$id]=$cidr; vpcs[$vpc]=1; done <<< "$rows"
if [ ${#vpcs[@]} -ne 1 ]; then
  fail "the subnets are in more than one VPC (${!vpcs[*]})" "give SubnetIds of one VPC: the database's"
  exit 1
fi
vpc=${!vpcs[*]}
say "preflight: subnets ${subnet_ids[*]} in $vpc ($region), security groups ${group_ids[*]}"

# --- each subnet's way out: its route table's default route ---
# A default route whose target is gone (blackhole) is no way out.
tables=$(q ec2 describe-route-tables --filters "Name=vpc-id,Values=$vpc" --query \
  'RouteTables[].[RouteTableId, length(Associations[?Main] || `[]`), join(`,`, Associations[?SubnetId].SubnetId || `[]`), join(`,`, Routes[?DestinationCidrBlock==`0.0.0.0/0` && State==`active`].[NatGatewayId || TransitGatewayId || NetworkInterfaceId || InstanceId || GatewayId][])]') ||
  cannot "aws ec2 describe-route-tables"
declare -A table_of=() out_of=()
main_table=""
while IFS='|' read -r rt main assoc out; do
  [ -n "$rt" ] || continue
  [ "$main" -gt 0 ] && main_table=$rt
  out_of[$rt]=$out
  IFS=, read -r -a assoc_ids <<< "$assoc"
  for s in "${assoc_ids[@]}"; do table_of[$s]=$rt; done
done <<< "$tables"
# Each endpoint with the stack that made it (CloudFormation's tag): the
# deployed stack's own are not the VPC's.
endpoints=$(q ec2 describe-vpc-endpoints --filters "Name=vpc-id,Values=$vpc" --query \
  'VpcEndpoints[].[VpcEndpointId, ServiceName, VpcEndpointType, PrivateDnsEnabled || `false`, join(`,`, RouteTableIds || `[]`), join(`,`, Groups[].GroupId || `[]`), Tags[?Key==`aws:cloudformation:stack-name`].Value | [0] || `-`]') ||
  cannot "aws ec2 describe-vpc-endpoints"
# The VPC's own endpoint serving service $1 privately, and its groups.
own_endpoint() {
  local id name kind dns tables sgs maker
  while IFS='|' read -r id name kind dns tables sgs maker; do
    [ -n "$stack" ] && [ "$maker" = "$stack" ] && continue
    [ "$name" = "com.amazonaws.$region.$1" ] && [ "$kind" = Interface ] && [ "$dns" = True ] && { echo "$id|$sgs"; return; }
  done <<< "$endpoints"
  return 0
}
s3_gateway_for() {
  local id name kind dns tables sgs maker
  while IFS='|' read -r id name kind dns tables sgs maker; do
    [ "$name" = "com.amazonaws.$region.s3" ] && [ "$kind" = Gateway ] && [[ ",$tables," == *",$1,"* ]] && { echo "$id"; return; }
  done <<< "$endpoints"
  return 0
}

# --- the database: the RDS instance (or proxy) of that name ---
db=""
if [ -n "$host" ]; then
  db=$(q rds describe-db-instances --query "DBInstances[?Endpoint.Address=='$host'].[DBInstanceIdentifier, Endpoint.Port, DBSubnetGroup.VpcId, join(',', VpcSecurityGroups[].VpcSecurityGroupId)]") ||
    cannot "aws rds describe-db-instances"
  [ -n "$db" ] || db=$(q rds describe-db-proxies --query "DBProxies[?Endpoint=='$host'].[DBProxyName, \`5432\`, VpcId, join(',', VpcSecurityGroupIds)]") ||
    cannot "aws rds describe-db-proxies"
fi
IFS='|' read -r db_name db_port db_vpc db_groups <<< "${db:-|||}"
# Every rule admitting traffic into the groups that matter, one per line:
# group|protocol|from|to|referenced group|cidr.
wanted=$group_list
while IFS='|' read -r _ _ _ _ _ sgs _; do [ -z "$sgs" ] || wanted+=,$sgs; done <<< "$endpoints"
[ -z "$db_groups" ] || wanted+=,$db_groups
rules=$(q ec2 describe-security-group-rules --filters "Name=group-id,Values=$wanted" \
  --query 'SecurityGroupRules[?!IsEgress].[GroupId,IpProtocol,FromPort,ToPort,ReferencedGroupInfo.GroupId,CidrIpv4]') ||
  cannot "aws ec2 describe-security-group-rules"

# Whether any of the groups $1 (comma-separated) admits the functions on
# TCP port $2: from one of their groups, or from addresses holding every
# subnet of theirs. The rules: every group's that matters, read once.
admits() {
  local g proto from to ref cidr s all
  while IFS='|' read -r g proto from to ref cidr; do
    [[ -n "$g" && ",$1," == *",$g,"* ]] || continue
    [ "$proto" = -1 ] || { [ "$proto" = tcp ] && [ "$from" -le "$2" ] && [ "$to" -ge "$2" ]; } || continue
    for s in "${group_ids[@]}"; do [ "$ref" = "$s" ] && return 0; done
    if [ -n "$cidr" ] && [ "$cidr" != None ]; then
      all=1
      for s in "${subnet_ids[@]}"; do covers "$cidr" "${cidr_of[$s]}" || all=0; done
      [ $all = 1 ] && return 0
    fi
  done <<< "$rules"
  return 1
}

for s in "${subnet_ids[@]}"; do
  rt=${table_of[$s]:-$main_table}
  out=${out_of[$rt]:-}
  case $out in
    nat-* | tgw-* | eni-* | i-*) say "ok    $s ($rt): 0.0.0.0/0 through $out, every service"; continue ;;
    igw-*) fail "$s ($rt): 0.0.0.0/0 goes to an internet gateway ($out), which a function's network interface cannot use (it has no public address)" \
      "route 0.0.0.0/0 through a NAT gateway (aws ec2 create-route --route-table-id $rt --destination-cidr-block 0.0.0.0/0 --nat-gateway-id nat-…), or use private subnets with endpoints (below)" ;;
  esac
  gw=$(s3_gateway_for "$rt")
  if [ -n "$gw" ] || [ -n "$(own_endpoint s3)" ]; then
    say "ok    $s ($rt): S3 through ${gw:-an S3 interface endpoint}"
  else
    fail "$s ($rt): no route to S3, where the setup answers CloudFormation (the deploy would wait about 16 minutes for it, then roll back)" \
      "a gateway endpoint, free: aws ec2 create-vpc-endpoint --vpc-id $vpc --service-name com.amazonaws.$region.s3 --route-table-ids $rt"
  fi
done
nat_everywhere=1
for s in "${subnet_ids[@]}"; do
  rt=${table_of[$s]:-$main_table}
  case ${out_of[$rt]:-} in nat-* | tgw-* | eni-* | i-*) ;; *) nat_everywhere=0 ;; esac
done

# --- Secrets Manager, SQS, KMS: a NAT, the VPC's endpoints, or the stack's ---
for service in secretsmanager sqs kms; do
  own=$(own_endpoint "$service")
  if [ -n "$endpoints_vpc" ]; then
    [ "$endpoints_vpc" = "$vpc" ] || { fail "VpcEndpointsVpcId=$endpoints_vpc, but the subnets are in $vpc" "VpcEndpointsVpcId=$vpc"; break; }
    if [ -n "$own" ]; then
      fail "the stack would make a $service endpoint with private DNS, and the VPC has one already (${own%%|*}): CloudFormation refuses the second" \
        "leave VpcEndpointsVpcId empty: the VPC's own endpoints serve the functions"
    else
      say "ok    $service: the stack's endpoint (VpcEndpointsVpcId)"
    fi
  elif [ -n "$own" ]; then
    if admits "${own#*|}" 443; then
      say "ok    $service: the VPC's endpoint ${own%%|*}"
    else
      fail "$service: the VPC's endpoint ${own%%|*} does not admit the functions' security groups on 443 (its groups: ${own#*|})" \
        "aws ec2 authorize-security-group-ingress --group-id $(first "${own#*|}") --protocol tcp --port 443 --source-group ${group_ids[0]}"
    fi
  elif [ $nat_everywhere = 0 ]; then
    fail "$service: no NAT gateway in every subnet, and no endpoint for it in $vpc" \
      "VpcEndpointsVpcId=$vpc (the stack makes the endpoints), or aws ec2 create-vpc-endpoint --vpc-id $vpc --vpc-endpoint-type Interface --service-name com.amazonaws.$region.$service --subnet-ids $subnet_list --security-group-ids $group_list --private-dns-enabled"
  fi
done
# The stack's endpoints take the functions' security groups: those must
# admit themselves on 443.
if [ -n "$endpoints_vpc" ] && [ "$endpoints_vpc" = "$vpc" ] && ! admits "$group_list" 443; then
  fail "the stack's endpoints take the functions' security groups ($group_list), which do not admit themselves on 443: every call to Secrets Manager, SQS and KMS would time out" \
    "aws ec2 authorize-security-group-ingress --group-id ${group_ids[0]} --protocol tcp --port 443 --source-group ${group_ids[0]}"
fi

# --- the database: its VPC, and its security groups on its port ---
if [ -z "$host" ]; then
  say "note  no DbHost: the database's security group is not checked (give DbHost=… to)"
elif [ -z "$db_name" ]; then
  say "note  $host is no RDS instance or proxy of this account in $region: its security group is not checked"
else
  [ -n "${p[DbPort]:-}" ] || port=$db_port
  if [ "$db_vpc" != "$vpc" ]; then
    fail "the database $db_name is in $db_vpc, the subnets in $vpc: the functions cannot reach it" \
      "give SubnetIds of $db_vpc (aws ec2 describe-subnets --filters Name=vpc-id,Values=$db_vpc --query 'Subnets[].SubnetId')"
  elif admits "$db_groups" "$port"; then
    say "ok    the database $db_name ($db_groups) admits the functions on $port"
  else
    fail "the database $db_name's security groups ($db_groups) do not admit the functions' ($group_list) on $port" \
      "aws ec2 authorize-security-group-ingress --group-id ${db_groups%%,*} --protocol tcp --port $port --source-group ${group_ids[0]}"
  fi
fi

if [ $found -gt 0 ]; then
  say "preflight: $found finding(s): fix them, then deploy (bash deploy.sh … runs this check again)"
  exit 1
fi
say "preflight: the network is ready"
