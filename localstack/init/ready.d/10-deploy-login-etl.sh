#!/bin/bash
# LocalStack init hook (runs inside the LocalStack container once it is ready):
# deploys the sam-built template.yaml (mounted at /opt/login-etl/build) with a
# DB secret pointing at the compose `postgres` service.
set -euo pipefail
build=/opt/login-etl/build
stack=login-etl-local
if [[ ! -f $build/template.yaml ]]; then
  echo "login-etl: no $build/template.yaml: run 'make sam-build' on the host, then restart localstack" >&2
  exit 1
fi

secret_arn=$(awslocal secretsmanager create-secret --name "$stack/db" --query ARN --output text \
  --secret-string '{"engine":"postgres","username":"postgres","password":"postgres","host":"postgres","port":5432,"dbname":"postgres"}')
awslocal s3 mb "s3://$stack-artifacts"
awslocal cloudformation package --template-file "$build/template.yaml" \
  --s3-bucket "$stack-artifacts" --output-template-file /tmp/login-etl-packaged.yaml
awslocal cloudformation deploy --template-file /tmp/login-etl-packaged.yaml --stack-name "$stack" \
  --capabilities CAPABILITY_IAM --parameter-overrides \
  "DbSecretArn=$secret_arn" DbSslMode=disable RunMigrations=true \
  MaximumBatchingWindowInSeconds=1 VisibilityTimeoutSeconds=5 \
  RevealTrustedPrincipalArn=arn:aws:iam::000000000000:role/investigators
awslocal cloudformation describe-stacks --stack-name "$stack" --query 'Stacks[0].Outputs' --output table
echo "login-etl: deployed; send a message with:"
echo "  awslocal sqs send-message --queue-url \$(awslocal cloudformation describe-stacks --stack-name $stack --query \"Stacks[0].Outputs[?OutputKey=='QueueUrl'].OutputValue\" --output text) --message-body '{...}'"
