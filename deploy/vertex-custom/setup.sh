#!/usr/bin/env bash
# One-time Google Cloud set-up for the vertex-custom training backend: the APIs, an Artifact
# Registry repository with the project's image, the staging bucket, the training job's
# service account and the roles of both accounts. Safe to run again (it creates only what
# is missing, and role bindings are idempotent). Read README.md first.
#
#   PROJECT=my-project SERVICE_ACCOUNT=edge-automl@my-project.iam.gserviceaccount.com \
#     deploy/vertex-custom/setup.sh
#
# SERVICE_ACCOUNT is the identity the API replicas and workers already run as (Workload
# Identity, the attached account, or the key in EDGE_AUTOML_VERTEX_CREDENTIALS_FILE).
#
# Checked by reading only: gcloud and Docker cannot run on the development machines
# (tests/training/test_vertex_custom.py only checks that bash parses this file).
set -euo pipefail

: "${PROJECT:?set PROJECT to the Google Cloud project id}"
: "${SERVICE_ACCOUNT:?set SERVICE_ACCOUNT to the e-mail of the account the service runs as}"
REGION="${REGION:-us-central1}"
REPOSITORY="${REPOSITORY:-edge-automl}"
STAGING_BUCKET="${STAGING_BUCKET:-${PROJECT}-edge-automl-staging}"
JOB_ACCOUNT_NAME="${JOB_ACCOUNT_NAME:-edge-automl-trainer}"
JOB_ACCOUNT="${JOB_ACCOUNT_NAME}@${PROJECT}.iam.gserviceaccount.com"
# The bucket of EDGE_AUTOML_BLOB_URL when it is gs://: the job reads images there in place.
BLOB_BUCKET="${BLOB_BUCKET:-}"
VERSION="${VERSION:-1.0}"
# cpu: the Dockerfile's default CPU torch; cuda: PyPI's Linux torch wheels, built for CUDA,
# for machines with EDGE_AUTOML_VERTEX_CUSTOM_ACCELERATOR_TYPE set.
FLAVOUR="${FLAVOUR:-cuda}"
IMAGE="${REGION}-docker.pkg.dev/${PROJECT}/${REPOSITORY}/edge-automl:${VERSION}-${FLAVOUR}"

gcloud config set project "$PROJECT"

# 1. APIs.
gcloud services enable aiplatform.googleapis.com artifactregistry.googleapis.com \
  storage.googleapis.com iam.googleapis.com

# 2. The image: the repository's Dockerfile (entrypoint edge-automl), pushed to Artifact
#    Registry in the region the jobs run in. Vertex AI pulls it with its own service agent,
#    which may read repositories of the same project without any grant.
gcloud artifacts repositories describe "$REPOSITORY" --location "$REGION" >/dev/null 2>&1 \
  || gcloud artifacts repositories create "$REPOSITORY" --location "$REGION" \
       --repository-format docker --description "edge-automl images"
gcloud auth configure-docker "${REGION}-docker.pkg.dev" --quiet
case "$FLAVOUR" in
  cpu)  TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu ;;
  cuda) TORCH_INDEX_URL=https://pypi.org/simple ;;
  *)    echo "FLAVOUR must be cpu or cuda, got '$FLAVOUR'" >&2; exit 1 ;;
esac
docker build --build-arg TORCH_INDEX_URL="$TORCH_INDEX_URL" --build-arg VERSION="$VERSION" \
  -t "$IMAGE" "$(dirname "$0")/../.."
docker push "$IMAGE"

# 3. The staging bucket, in the jobs' region. Old job folders can go after a while.
gcloud storage buckets describe "gs://${STAGING_BUCKET}" >/dev/null 2>&1 \
  || gcloud storage buckets create "gs://${STAGING_BUCKET}" --location "$REGION" \
       --uniform-bucket-level-access

# 4. The account the training job runs as: it reads its snapshot and images and writes
#    its progress, checkpoints and model.
gcloud iam service-accounts describe "$JOB_ACCOUNT" >/dev/null 2>&1 \
  || gcloud iam service-accounts create "$JOB_ACCOUNT_NAME" \
       --display-name "edge-automl training jobs on Vertex AI"
gcloud storage buckets add-iam-policy-binding "gs://${STAGING_BUCKET}" \
  --member "serviceAccount:${JOB_ACCOUNT}" --role roles/storage.objectAdmin
if [ -n "$BLOB_BUCKET" ]; then
  gcloud storage buckets add-iam-policy-binding "gs://${BLOB_BUCKET}" \
    --member "serviceAccount:${JOB_ACCOUNT}" --role roles/storage.objectViewer
fi

# 5. The service's own account: creates, reads and cancels custom jobs, runs them as the
#    job's account, and stages data and reads outputs in the staging bucket.
gcloud projects add-iam-policy-binding "$PROJECT" \
  --member "serviceAccount:${SERVICE_ACCOUNT}" --role roles/aiplatform.user --condition None
gcloud iam service-accounts add-iam-policy-binding "$JOB_ACCOUNT" \
  --member "serviceAccount:${SERVICE_ACCOUNT}" --role roles/iam.serviceAccountUser
gcloud storage buckets add-iam-policy-binding "gs://${STAGING_BUCKET}" \
  --member "serviceAccount:${SERVICE_ACCOUNT}" --role roles/storage.objectAdmin

cat <<DONE
Set on every API replica and worker (see vertex.env):
  EDGE_AUTOML_VERTEX_PROJECT=${PROJECT}
  EDGE_AUTOML_VERTEX_LOCATION=${REGION}
  EDGE_AUTOML_VERTEX_STAGING_BUCKET=gs://${STAGING_BUCKET}
  EDGE_AUTOML_VERTEX_SERVICE_ACCOUNT=${JOB_ACCOUNT}
  EDGE_AUTOML_VERTEX_CUSTOM_IMAGE=${IMAGE}
DONE
