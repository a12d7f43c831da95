#!/usr/bin/env bash
# Prepare a Cloud TPU VM (one host or every worker of a pod slice) and launch an xstilts run.
#
#   ./tpu_setup.sh --tpu NAME --zone ZONE [--project P] [--accelerator v4-32] [--create]
#                  [--data-dir DIR] [--weights HUB_ID] [--skip-install] [--skip-data]
#                  [--repo GIT_URL] [--run train|experiment|none] [--run-dir DIR]
#                  [--bucket GCS_BUCKET] [--dry-run] [-- ARGS...]
#   ./tpu_setup.sh --local [...]       # on the TPU VM itself, single host, no gcloud
#
# Steps, each on every worker (gcloud ... ssh --worker=all): copy this checkout (git archive of
# HEAD; or clone --repo), install jax[tpu] and xstilts at the pinned versions, fetch the datasets (python -m xstilts.data.prepare) and the XLM-R weights into
# the Hugging Face cache, then start `python -m xstilts.train` or `python -m xstilts.experiment`
# on all hosts at once: the same command on every worker. The hosts of a pod slice form one JAX
# system by themselves: xstilts starts jax.distributed when JAX detects a Cloud TPU pod (the
# metadata server names the workers; no coordinator flags), and the install step checks it with
# `python -m xstilts.partitioning` (each worker prints "process i of N ... all N processes
# answered"). Everything after `--` is passed to the launched module, e.g.
#   -- --gin_file=xstilts/gin/models/xlmr_large.gin --gin_file=xstilts/gin/runs/finetune.gin
# A pod writes one run directory from every host (Orbax saves each host's shards, the chief the
# tables): --bucket mounts gs://GCS_BUCKET with gcsfuse at the same path on every worker and puts
# --run-dir there; pass that path as the run's RUN_DIR. --dry-run prints every command.
set -euo pipefail

JAX_VERSION="0.10.2"
SOURCE_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

tpu="" zone="" project="" accelerator="v4-8" runtime="tpu-ubuntu2204-base"
create=0 local_mode=0 dry_run=0 skip_install=0 skip_data=0
data_dir="\$HOME/xstilts_data" weights="FacebookAI/xlm-roberta-large"
run="train" run_dir="\$HOME/xstilts_runs/run" repo="" bucket="" mount="\$HOME/xstilts_bucket"
run_args=()

usage() { sed -n '2,/^set /p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
die() { echo "tpu_setup.sh: $*" >&2; exit 2; }

while (($#)); do
  case "$1" in
    --tpu) tpu="${2:?--tpu needs a value}"; shift 2 ;;
    --zone) zone="${2:?--zone needs a value}"; shift 2 ;;
    --project) project="${2:?--project needs a value}"; shift 2 ;;
    --accelerator) accelerator="${2:?--accelerator needs a value}"; shift 2 ;;
    --runtime) runtime="${2:?--runtime needs a value}"; shift 2 ;;
    --data-dir) data_dir="${2:?--data-dir needs a value}"; shift 2 ;;
    --weights) weights="${2:?--weights needs a value}"; shift 2 ;;
    --run) run="${2:?--run needs a value}"; shift 2 ;;
    --run-dir) run_dir="${2:?--run-dir needs a value}"; shift 2 ;;
    --repo) repo="${2:?--repo needs a value}"; shift 2 ;;
    --bucket) bucket="${2:?--bucket needs a value}"; bucket="${bucket#gs://}"; shift 2 ;;
    --create) create=1; shift ;;
    --local) local_mode=1; shift ;;
    --dry-run) dry_run=1; shift ;;
    --skip-install) skip_install=1; shift ;;
    --skip-data) skip_data=1; shift ;;
    -h|--help) usage 0 ;;
    --) shift; run_args=("$@"); break ;;
    *) die "unknown option '$1' (see --help)" ;;
  esac
done

case "$run" in train|experiment|none) ;; *) die "--run must be train, experiment or none, not '$run'" ;; esac
if ((!local_mode)); then
  [[ -n "$tpu" ]] || die "--tpu NAME is required (or --local on the TPU VM itself)"
  [[ -n "$zone" ]] || die "--zone ZONE is required"
fi

# Workers: v4 counts TensorCores (2 per chip, 4 chips per host), v5e/v6e count chips (4 or 8 per host).
workers_for() {
  local type="$1" gen="${1%%-*}" n="${1##*-}"
  [[ "$n" =~ ^[0-9]+$ ]] || die "cannot read the chip count from --accelerator '$type'"
  case "$gen" in
    v2|v3|v4|v5p) echo $(( (n + 7) / 8 )) ;;
    v5litepod|v5e|v6e) if ((n <= 8)); then echo 1; else echo $(( n / 4 )); fi ;;
    *) echo 1 ;;
  esac
}

gcloud_flags=(--zone="$zone")
[[ -n "$project" ]] && gcloud_flags+=(--project="$project")

run_cmd() {  # run_cmd CMD...: run it, or print it (shell-quoted, copy-pasteable) with --dry-run
  if ((dry_run)); then echo "+ ${*@Q}"; else "$@"; fi
}

on_all_workers() {  # on_all_workers "SHELL COMMAND": on every host of the slice
  local command="$1"
  if ((local_mode)); then
    run_cmd bash -c "$command"
  else
    run_cmd gcloud compute tpus tpu-vm ssh "$tpu" "${gcloud_flags[@]}" --worker=all \
      --command="$command"
  fi
}

quote_args() { local out="" a; for a in "$@"; do out+=" $(printf '%q' "$a")"; done; echo "$out"; }

if ((local_mode)); then workers=1; else workers="$(workers_for "$accelerator")"; fi
echo "tpu_setup: tpu=${tpu:-local} accelerator=$accelerator workers=$workers run=$run dry_run=$dry_run"

if ((create)); then
  ((local_mode)) && die "--create needs --tpu/--zone, not --local"
  run_cmd gcloud compute tpus tpu-vm create "$tpu" "${gcloud_flags[@]}" \
    --accelerator-type="$accelerator" --version="$runtime"
fi

if ((!skip_install)); then
  if [[ -n "$repo" ]]; then
    on_all_workers "set -e; rm -rf \$HOME/xstilts; git clone -q $repo \$HOME/xstilts"
  else
    archive="/tmp/xstilts-src.tar.gz"
    run_cmd git -C "$SOURCE_DIR" archive --format=tar.gz -o "$archive" HEAD
    if ((local_mode)); then
      run_cmd bash -c "mkdir -p \$HOME/xstilts && tar -xzf $archive -C \$HOME/xstilts"
    else
      run_cmd gcloud compute tpus tpu-vm scp "$archive" "$tpu:$archive" "${gcloud_flags[@]}" \
        --worker=all
      on_all_workers "set -e; mkdir -p \$HOME/xstilts; tar -xzf $archive -C \$HOME/xstilts"
    fi
  fi
  on_all_workers "set -e; python3 -m venv \$HOME/xstilts_venv; . \$HOME/xstilts_venv/bin/activate; \
pip install -q --upgrade pip; \
pip install -q 'jax[tpu]==$JAX_VERSION' \
  -f https://storage.googleapis.com/jax-releases/libtpu_releases.html; \
pip install -q -e \"\$HOME/xstilts[data]\"; \
python -m xstilts.partitioning"
fi

if ((!skip_data)); then
  on_all_workers "set -e; . \$HOME/xstilts_venv/bin/activate; cd \$HOME/xstilts; \
python -m xstilts.data.prepare --data_dir $data_dir; \
python -c 'from xstilts.models.convert import resolve_checkpoint_dir as r; print(r(\"$weights\"))'"
fi

if [[ -n "$bucket" ]]; then
  # gcsfuse from Google's apt repository; --rename-dir-limit lets Orbax rename its temporary
  # checkpoint directories into place (gcsfuse refuses directory renames by default).
  on_all_workers "set -e; if ! command -v gcsfuse >/dev/null; then \
echo \"deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt gcsfuse-\$(lsb_release -cs) main\" | sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null; \
curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null; \
sudo apt-get update -qq && sudo apt-get install -y -qq gcsfuse; fi; \
mkdir -p $mount; mountpoint -q $mount || gcsfuse --implicit-dirs --rename-dir-limit=1000000 $bucket $mount"
  [[ "$run_dir" == "\$HOME/xstilts_runs/run" ]] && run_dir="$mount/run"
elif ((workers > 1)) && [[ "$run" != none ]]; then
  echo "tpu_setup: warning: $workers hosts but no --bucket: RUN_DIR must be on a filesystem" \
    "every host shares (Orbax writes each host's shards into it)" >&2
fi

if [[ "$run" != none ]]; then
  module="xstilts.$run"
  on_all_workers "set -eo pipefail; . \$HOME/xstilts_venv/bin/activate; cd \$HOME/xstilts; \
export XSTILTS_DATA_DIR=$data_dir; mkdir -p $run_dir; \
python -m $module$(quote_args "${run_args[@]}") 2>&1 | tee -a $run_dir/host-\$(hostname).log"
fi
