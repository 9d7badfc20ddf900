#!/usr/bin/env bash
# deploy.sh: a deploy of login-etl, keeping the masking key across a
# delete and a new stack.
#
#   ./deploy.sh [--template FILE] [--stack-name NAME] [--new-keys]
#               [--no-preflight] [Name=Value ...] [-- more deploy options]
#
# With SubnetIds, the network is checked first (preflight.sh beside this
# script, the same parameters): a finding stops the deploy in seconds,
# before anything is made; --no-preflight skips it.
#
# In a release (dist/): the template defaults to template.yaml beside this
# script, the release's one file (it fetches its code itself), deployed
# with the AWS CLI alone: `aws cloudformation deploy`, no bucket, no zip.
# From the source tree, `make deploy` runs it with `sam deploy` over sam
# build's output and samconfig.toml's environment (`-- --config-env ENV`:
# its stack name, and its saved parameters kept beside the ones given
# here). `--region` and `--profile` after `--` go to the lookups too.
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
template="" stack="" new_keys=0 preflight=1 params=() sam_args=()
while [ $# -gt 0 ]; do
  case $1 in
    --template) template=$2; shift 2 ;;
    --stack-name) stack=$2; shift 2 ;;
    --ca-bundle) echo "deploy.sh: --ca-bundle is gone: the RDS CAs are built in, and a release's zip is fetched by the stack as built. For a server of your own, DbCaBundleSecretArn= (a secret holding its CA)" >&2; exit 2 ;;
    --new-keys) new_keys=1; shift ;;
    --no-preflight) preflight=0; shift ;;
    --) shift; sam_args=("$@"); break ;;
    -h | --help) sed -n '2,26p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *=*) params+=("$1"); shift ;;
    *) echo "deploy.sh: unknown argument '$1': parameters are Name=Value, the deploy tool's own options come after --" >&2; exit 2 ;;
  esac
done
[ -z "$template" ] && [ -f "$here/template.yaml" ] && template=$here/template.yaml
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
# A release's template (it fetches its code: ReleaseFiles) needs the AWS CLI alone.
release=0
[ -n "$template" ] && [ -z "$config_env" ] && grep -qs '^ *ReleaseFiles:' "$template" && release=1
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
# A stack made before the one file (from source: make deploy, sam deploy)
# holds its resources itself: the one file would move them
# into a nested stack, making new queues, functions and keys and deleting
# the old ones. It is updated in place with the stack template instead.
if [ -n "$state" ] && [ $release = 1 ]; then
  if ! made=$(aws cloudformation describe-stack-resource --stack-name "$stack" --logical-resource-id ReleaseFiles \
    --query StackResourceDetail.ResourceType --output text 2>&1); then
    case $made in
      *"does not exist"* | *"not found"*)
        echo "deploy.sh: the stack $stack holds its resources itself (made from source: make deploy, sam deploy): template.yaml would replace them all (new queues, functions and keys). Update it in place with the stack template instead: docs/upgrade.md, \"A stack made before the one file\"" >&2
        exit 2 ;;
      *) echo "deploy.sh: cannot read the stack $stack's resources: $made" >&2; exit 1 ;;
    esac
  fi
fi
# A stack made from source may read a CA bundle from beside bootstrap
# (make deploy DB_CA_BUNDLE=...). A deploy that does not give
# DbCaBundleFile keeps it (CloudFormation keeps a parameter not given), and
# a zip without the file (a release's never holds one) fails every TLS.
if [ -n "$state" ] && ! given DbCaBundleFile; then
  had=$(aws cloudformation describe-stacks --stack-name "$stack" --output text \
    --query "Stacks[0].Parameters[?ParameterKey=='DbCaBundleFile'].ParameterValue") ||
    { echo "deploy.sh: cannot read the parameters of the stack $stack (above): check the credentials and the region" >&2; exit 1; }
  if [ -n "$had" ] && [ "$had" != None ]; then
    if [ $release = 1 ]; then
      echo "deploy.sh: the stack $stack reads DbCaBundleFile=$had from beside bootstrap, and a release's zip holds no such file: give DbCaBundleFile= (the RDS CAs are built in; for a server of your own, DbCaBundleSecretArn=<a secret holding its CA>)" >&2
    else
      echo "deploy.sh: the stack $stack reads DbCaBundleFile=$had from beside bootstrap, and this deploy packs no bundle: make deploy DB_CA_BUNDLE=$had again, as on every deploy; or DbCaBundleFile= to stop reading one (the RDS CAs are built in)" >&2
    fi
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
  # The AWS CLI alone: the template goes inline (it fits), and the stack
  # fetches its code from the release itself.
  rest=()
  for a in "${sam_args[@]+"${sam_args[@]}"}"; do
    [ "$a" = --no-confirm-changeset ] || rest+=("$a")  # sam's; the AWS CLI asks nothing
  done
  args=(cloudformation deploy --template-file "$template" --stack-name "$stack"
    --capabilities CAPABILITY_IAM CAPABILITY_AUTO_EXPAND --no-fail-on-empty-changeset)
  [ ${#params[@]} -gt 0 ] && args+=(--parameter-overrides "${params[@]}")
  echo "==> aws cloudformation deploy $stack"
  exec aws "${args[@]}" "${rest[@]+"${rest[@]}"}"
fi

args=(deploy --stack-name "$stack" --capabilities CAPABILITY_IAM --no-fail-on-empty-changeset)
[ -n "$template" ] && args+=(--template-file "$template")
# An artifact bucket: the caller's (--s3-bucket, or samconfig.toml's), else SAM's own.
[[ " ${sam_args[*]+${sam_args[*]}} " == *" --s3-bucket "* || " ${sam_args[*]+${sam_args[*]}} " == *" --config-env "* ]] || args+=(--resolve-s3)
[ ${#params[@]} -gt 0 ] && args+=(--parameter-overrides "${params[@]}")
echo "==> sam ${args[*]:0:3} ${sam_args[*]+${sam_args[*]}}"
exec sam "${args[@]}" "${sam_args[@]+"${sam_args[@]}"}"
