#!/usr/bin/env bash
# deploy.sh: a deploy of login-etl, keeping the masking key across a
# delete and a new stack.
#
#   ./deploy.sh [--template FILE] [--stack-name NAME] [--ca-bundle FILE]
#               [--new-keys] [--no-preflight] [Name=Value ...] [-- more deploy options]
#
# With SubnetIds, the network is checked first (preflight.sh beside this
# script, the same parameters): a finding stops the deploy in seconds,
# before anything is made; --no-preflight skips it.
#
# In a release (dist/): the template defaults to template-arm64.yaml beside
# this script, the function's zip, deployed with the AWS CLI alone (`aws
# cloudformation package` into the bucket `--s3-bucket B` after `--`, else
# login-etl-artifacts-<account>-<region>, made if missing; then `aws
# cloudformation deploy`). From the source tree, `make deploy` runs it
# with `sam deploy` over sam build's output and samconfig.toml's
# environment (`-- --config-env ENV`: its stack name, and its saved
# parameters kept beside the ones given here). `--region` and `--profile`
# after `--` go to the lookups too.
#
# The key secrets outlive their stack (DeletionPolicy: Retain): the
# database refuses rows under any other key. So when NAME is not deployed
# and no ExistingMaskingKeySecretArn is given, the secrets an earlier stack
# NAME made are looked up by their tags and passed back to the new stack
# (ExistingMaskingKeySecretArn, ExistingErasureKeySecretArn). More than one
# candidate: it stops and lists them, with the parameters to pass.
# --new-keys: a new key on purpose (a new, empty database).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
template="" stack="" ca_bundle="" new_keys=0 preflight=1 params=() sam_args=()
while [ $# -gt 0 ]; do
  case $1 in
    --template) template=$2; shift 2 ;;
    --stack-name) stack=$2; shift 2 ;;
    --ca-bundle) ca_bundle=$2; shift 2 ;;
    --new-keys) new_keys=1; shift ;;
    --no-preflight) preflight=0; shift ;;
    --) shift; sam_args=("$@"); break ;;
    -h | --help) sed -n '2,28p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *=*) params+=("$1"); shift ;;
    *) echo "deploy.sh: unknown argument '$1': parameters are Name=Value, the deploy tool's own options come after --" >&2; exit 2 ;;
  esac
done
[ -z "$template" ] && [ -f "$here/template-arm64.yaml" ] && template=$here/template-arm64.yaml
# sam's options that the lookups below must follow too.
config_env=""
for ((i = 0; i + 1 < ${#sam_args[@]}; i++)); do
  case ${sam_args[i]} in
    --region) export AWS_REGION=${sam_args[i + 1]} AWS_DEFAULT_REGION=${sam_args[i + 1]} ;;
    --profile) export AWS_PROFILE=${sam_args[i + 1]} ;;
    --config-env) config_env=${sam_args[i + 1]} ;;
  esac
done
if [ -n "$config_env" ]; then
  # samconfig.toml's stack name, and its saved parameters: sam drops them
  # all when --parameter-overrides is given, so they go first here.
  saved=$(python3 - "$config_env" << 'PY'
import shlex, sys
try:
    import tomllib
    config = tomllib.load(open("samconfig.toml", "rb"))
except ModuleNotFoundError:  # Python < 3.11: the SAM CLI's own TOML library
    import tomlkit
    config = tomlkit.parse(open("samconfig.toml").read())
env = config.get(sys.argv[1], {})
stack = env.get("global", {}).get("parameters", {}).get("stack_name") or env.get("deploy", {}).get("parameters", {}).get("stack_name", "")
overrides = env.get("deploy", {}).get("parameters", {}).get("parameter_overrides", [])
words = shlex.split(overrides) if isinstance(overrides, str) else list(overrides)
print("\n".join([stack, *words]))
PY
  ) || { echo "deploy.sh: cannot read samconfig.toml's [$config_env] environment" >&2; exit 2; }
  mapfile -t saved <<< "$saved"
  [ -n "$stack" ] || stack=${saved[0]}
  params=("${saved[@]:1}" "${params[@]+"${params[@]}"}")
fi
stack=${stack:-login-etl}
[[ $stack =~ ^[A-Za-z][A-Za-z0-9-]{0,127}$ ]] || { echo "deploy.sh: '$stack' is no CloudFormation stack name (letters, digits, hyphens)" >&2; exit 2; }
# A release's template (its CodeUri a zip) needs the AWS CLI alone.
release=0
[ -n "$template" ] && [ -z "$config_env" ] && grep -qs '^ *CodeUri: *.*\.zip *$' "$template" && release=1
tools=(aws); [ $release = 1 ] || tools+=(sam)
for tool in "${tools[@]}"; do
  command -v "$tool" > /dev/null || { echo "deploy.sh needs the $tool command: pip install awscli$([ $release = 1 ] || echo ' aws-sam-cli') (or your platform's packages)" >&2; exit 2; }
done
given() { local p; for p in "${params[@]+"${params[@]}"}"; do [ "${p%%=*}" = "$1" ] && return 0; done; return 1; }

# The network, before anything is made: a subnet with no way to S3 would
# make the setup's answer to CloudFormation time out after 16 minutes, then roll back.
if [ $preflight = 1 ] && given SubnetIds; then
  rc=0
  bash "$here/preflight.sh" --stack-name "$stack" "${params[@]}" || rc=$?
  case $rc in
    0) ;;
    1) echo "deploy.sh: the network is not ready for the stack (each finding above names its fix); nothing was deployed. --no-preflight deploys anyway" >&2; exit 1 ;;
    *) echo "deploy.sh: the network check could not run (above); nothing was deployed. Give the deployer its reads (deployer-policy.json), or --no-preflight to deploy unchecked" >&2; exit 2 ;;
  esac
fi

# The RDS CA bundle goes beside bootstrap, in a copy of each zip the
# template names (the release's zips stay as checksummed).
if [ -n "$ca_bundle" ]; then
  grep -qs 'BEGIN CERTIFICATE' "$ca_bundle" || { echo "--ca-bundle $ca_bundle is no PEM file of certificates: download https://truststore.pki.rds.amazonaws.com/global/global-bundle.pem" >&2; exit 2; }
  [ -n "$template" ] || { echo "--ca-bundle is for a release's template (its zips); make deploy DB_CA_BUNDLE=... does it from source" >&2; exit 2; }
  work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
  dir=$(cd "$(dirname "$template")" && pwd)
  mapfile -t zips < <(sed -n 's/^ *CodeUri: *\(.*\.zip\) *$/\1/p' "$template" | sort -u)
  [ ${#zips[@]} -gt 0 ] || { echo "--ca-bundle: $template names no zip (CodeUri): it is for a release's template-<arch>.yaml" >&2; exit 2; }
  for zip in "${zips[@]}"; do
    cp "$dir/$zip" "$work/$zip"
    # -X: no extra attributes (Info-ZIP's UT field holds the file's access
    # time), so the same bundle makes the same zip and a deploy of nothing
    # new changes no function.
    zip -X -q -j "$work/$zip" "$ca_bundle"
  done
  cp "$template" "$work/template.yaml"
  template=$work/template.yaml
  given DbCaBundleFile || params+=("DbCaBundleFile=$(basename "$ca_bundle")")
  echo "==> $(basename "$ca_bundle") packaged beside bootstrap (DbCaBundleFile=$(basename "$ca_bundle"))"
fi

if ! state=$(aws cloudformation describe-stacks --stack-name "$stack" --query 'Stacks[0].StackStatus' --output text 2>&1); then
  case $state in
    *"does not exist"*) state="" ;;
    *) echo "deploy.sh: cannot read the stack $stack: $state" >&2; exit 1 ;;
  esac
fi
# A first changeset never executed leaves REVIEW_IN_PROGRESS: no stack yet.
[ "$state" = REVIEW_IN_PROGRESS ] && state=""
if [ "$state" = ROLLBACK_COMPLETE ]; then
  echo "deploy.sh: the stack $stack is in ROLLBACK_COMPLETE: its first create failed (why: aws cloudformation describe-stack-events --stack-name $stack) and CloudFormation updates no such stack. Delete it (aws cloudformation delete-stack --stack-name $stack: the database, its roles and their secrets stay, and the next stack's setup takes the secrets over; with DeployPrincipalArns, first delete the $stack/* secrets as one of those roles), then deploy again" >&2
  exit 2
fi
# The stack reads a CA bundle from beside bootstrap: a deploy without it
# would keep DbCaBundleFile (CloudFormation keeps a parameter not given)
# and upload a zip without the file, and every connection would fail TLS.
if [ -n "$state" ] && [ -z "$ca_bundle" ] && ! given DbCaBundleFile; then
  had=$(aws cloudformation describe-stacks --stack-name "$stack" --output text \
    --query "Stacks[0].Parameters[?ParameterKey=='DbCaBundleFile'].ParameterValue") ||
    { echo "deploy.sh: cannot read the parameters of the stack $stack (above): check the credentials and the region" >&2; exit 1; }
  if [ -n "$had" ] && [ "$had" != None ]; then
    echo "deploy.sh: the stack $stack reads DbCaBundleFile=$had from beside bootstrap, and this deploy packs no bundle: give --ca-bundle $had again (make deploy: DB_CA_BUNDLE=$had), as on every deploy; or DbCaBundleFile= to stop reading one (DbCaBundleSecretArn, or a proxy's public certificate)" >&2
    exit 2
  fi
fi
if [ -z "$state" ] && [ $new_keys = 0 ] && ! given ExistingMaskingKeySecretArn; then
  # The template's own tags, or CloudFormation's on stacks made before them.
  found() {
    aws secretsmanager list-secrets --filters "Key=tag-value,Values=$stack" --output text \
      --query "SecretList[?(Tags[?Key=='login-etl:stack' && Value=='$stack'] && Tags[?Key=='login-etl:key' && Value=='$1']) || (Tags[?Key=='aws:cloudformation:stack-name' && Value=='$stack'] && Tags[?Key=='aws:cloudformation:logical-id' && Value=='$2'])].[ARN, CreatedDate]"
  }
  masking=$(found masking MaskingKeySecret)
  erasure=$(found erasure ErasureKeySecret)
  count() { [ -z "$1" ] && echo 0 || wc -l <<< "$1"; }
  if [ "$(count "$masking")" -gt 1 ] || [ "$(count "$erasure")" -gt 1 ]; then
    {
      echo "deploy.sh: earlier stacks named $stack left more than one key secret:"
      echo "$masking" | sed 's/^/  masking: /'; echo "$erasure" | sed 's/^/  erasure: /'
      echo "Pass the pair your database's rows are under (login-etl doctor names its key check values):"
      echo "  ExistingMaskingKeySecretArn=<masking ARN> ExistingErasureKeySecretArn=<erasure ARN of the same date>"
      echo "or --new-keys for a new, empty database."
    } >&2
    exit 2
  fi
  if [ "$(count "$masking")" -eq 1 ]; then
    reused=("ExistingMaskingKeySecretArn=$(cut -f1 <<< "$masking")")
    [ -n "$erasure" ] && reused+=("ExistingErasureKeySecretArn=$(cut -f1 <<< "$erasure")")
    echo "==> $stack is not deployed; reusing the key secrets an earlier $stack retained:"
    printf '      %s\n' "${reused[@]}"
    params+=("${reused[@]}")
  fi
fi

if [ $release = 1 ]; then
  # The AWS CLI: the zips packaged into a bucket, then a change set.
  bucket="" rest=()
  for ((i = 0; i < ${#sam_args[@]}; i++)); do
    case ${sam_args[i]} in
      --s3-bucket) bucket=${sam_args[i + 1]:-}; i=$((i + 1)) ;;
      --no-confirm-changeset) ;;  # sam's; the AWS CLI asks nothing
      *) rest+=("${sam_args[i]}") ;;
    esac
  done
  if [ -z "$bucket" ]; then
    account=$(aws sts get-caller-identity --query Account --output text)
    region=${AWS_REGION:-${AWS_DEFAULT_REGION:-$(aws configure get region || true)}}
    [ -n "$region" ] || { echo "deploy.sh: no region: set AWS_REGION or pass -- --region R" >&2; exit 2; }
    bucket=login-etl-artifacts-$account-$region
    # Ours only: a bucket of that name in another account would get the code.
    aws s3api head-bucket --bucket "$bucket" --expected-bucket-owner "$account" 2> /dev/null || {
      echo "==> making the artifact bucket $bucket"
      aws s3 mb "s3://$bucket" > /dev/null
      aws s3api put-public-access-block --bucket "$bucket" --public-access-block-configuration \
        BlockPublicAcls=true,IgnorePublicAcls=true,BlockPublicPolicy=true,RestrictPublicBuckets=true
    }
  fi
  [ -n "${work:-}" ] || { work=$(mktemp -d); trap 'rm -rf "$work"' EXIT; }
  echo "==> aws cloudformation package (into s3://$bucket), then deploy $stack"
  aws cloudformation package --template-file "$template" --s3-bucket "$bucket" --s3-prefix "$stack" \
    --output-template-file "$work/packaged.yaml" > /dev/null
  # The template is over CloudFormation's 51,200 bytes for an inline body:
  # it goes through the bucket too.
  args=(cloudformation deploy --template-file "$work/packaged.yaml" --stack-name "$stack"
    --s3-bucket "$bucket" --s3-prefix "$stack"
    --capabilities CAPABILITY_IAM CAPABILITY_AUTO_EXPAND --no-fail-on-empty-changeset)
  [ ${#params[@]} -gt 0 ] && args+=(--parameter-overrides "${params[@]}")
  aws "${args[@]}" "${rest[@]+"${rest[@]}"}"
  exit
fi

args=(deploy --stack-name "$stack" --capabilities CAPABILITY_IAM --no-fail-on-empty-changeset)
[ -n "$template" ] && args+=(--template-file "$template")
# An artifact bucket: the caller's (--s3-bucket, or samconfig.toml's), else SAM's own.
[[ " ${sam_args[*]+${sam_args[*]}} " == *" --s3-bucket "* || " ${sam_args[*]+${sam_args[*]}} " == *" --config-env "* ]] || args+=(--resolve-s3)
[ ${#params[@]} -gt 0 ] && args+=(--parameter-overrides "${params[@]}")
echo "==> sam ${args[*]:0:3} ${sam_args[*]+${sam_args[*]}}"
# Not exec: the EXIT trap removes the zips' copies.
sam "${args[@]}" "${sam_args[@]+"${sam_args[@]}"}"
