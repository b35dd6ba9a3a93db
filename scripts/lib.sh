# shellcheck shell=bash
# Shared set-up for scripts/lab-deploy and scripts/test: everything a fresh
# Debian/Ubuntu machine needs, installed only when missing.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV="$REPO/.venv"
export LITELLM_LAB_DIR="$REPO/.lab"
export PIP_DISABLE_PIP_VERSION_CHECK=1
export ANSIBLE_FORCE_COLOR="${ANSIBLE_FORCE_COLOR:-0}"
export PY_COLORS=0
# Every playbook run of the lab and of CI (molecule, scripts/lab-*, the drills) uses Mitogen's
# linear strategy: one Python per host instead of one per task, about twice as fast here (see
# lab/ansible/strategy/mitogen_linear.py). ANSIBLE_STRATEGY=linear selects Ansible's own, as
# production runs use; scripts/test runs the check mode on fresh hosts, the PGDG scenario and the
# playbooks against the control node itself (pki, module, PGDG facts) so.
export ANSIBLE_STRATEGY_PLUGINS="$REPO/lab/ansible/strategy"
export ANSIBLE_STRATEGY="${ANSIBLE_STRATEGY:-mitogen_linear}"
# Except molecule's create and destroy playbooks: their async Docker tasks on the control node
# never finish under Mitogen (the job is reported started, the container is never removed).
molecule() {
  case "${1:-}" in
    create | destroy) ANSIBLE_STRATEGY=linear command molecule "$@" ;;
    *) command molecule "$@" ;;
  esac
}

# prometheus (promtool) and prometheus-alertmanager: the alert rules' unit tests and the
# loopback alerting test; chromium: the usage report's page rendered headless.
APT_PACKAGES=(docker.io debootstrap postgresql python3-venv git ca-certificates apache2-utils
  prometheus prometheus-alertmanager chromium)

log() { printf '\n==> %s\n' "$*"; }

stage_start() { STAGE_NAME=$1; STAGE_T0=$(date +%s); log "$1"; }
stage_end() { printf '    %s: %d s\n' "$STAGE_NAME" "$(( $(date +%s) - STAGE_T0 ))"; }

require_root() {
  [ "$(id -u)" -eq 0 ] || { echo "run as root (it installs packages and runs Docker)" >&2; exit 1; }
}

ensure_apt_packages() {
  local missing=()
  for pkg in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing apt packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # The host's own PostgreSQL cluster is not used: tests start throwaway clusters.
  if command -v pg_lsclusters >/dev/null; then
    pg_lsclusters -h 2>/dev/null | while read -r ver name _; do
      pg_ctlcluster "$ver" "$name" stop 2>/dev/null || true
    done
  fi
  # Nor are its Prometheus and Alertmanager services (the tests run their own, on loopback).
  if [ -d /run/systemd/system ]; then
    systemctl disable --now prometheus prometheus-alertmanager 2>/dev/null || true
  fi
}

ensure_venv() {
  local stamp="$VENV/.requirements.sha256" want
  want=$(cat "$REPO/requirements.txt" "$REPO/gateway/pyproject.toml" | sha256sum | cut -d' ' -f1)
  if [ -x "$VENV/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    return 0
  fi
  log "building the project venv in $VENV"
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --upgrade pip
  # pip byte-compiles file by file (about 45 of the 60 s a fresh venv took here); compileall on
  # both cores takes 17 s. The .pyc files must exist up front: where PYTHONDONTWRITEBYTECODE is
  # set (this machine sets it), every process would otherwise compile what it imports, each time.
  "$VENV/bin/pip" install -q --no-compile -r "$REPO/requirements.txt"
  "$VENV/bin/python" -m compileall -q -j 0 "$VENV/lib" > /dev/null \
    || echo "compileall: some files did not compile (pip skips those too)" >&2
  "$VENV/bin/pip" install -q --no-deps --force-reinstall "$REPO/gateway"
  echo "$want" > "$stamp"
}

ensure_gateway_package() {
  # The package under test is always the working tree's, installed (not editable).
  "$VENV/bin/pip" install -q --no-deps --force-reinstall "$REPO/gateway"
}

ensure_dockerd() {
  if docker info >/dev/null 2>&1; then return 0; fi
  if [ -d /run/systemd/system ] && systemctl list-unit-files docker.service >/dev/null 2>&1; then
    log "starting docker.service"
    systemctl start docker
  else
    log "starting dockerd (no systemd on this machine)"
    if [ -f /var/run/docker.pid ] && ! kill -0 "$(cat /var/run/docker.pid)" 2>/dev/null; then
      rm -f /var/run/docker.pid
    fi
    # Its own session: dockerd must outlive the script (and the terminal or job) that started it.
    setsid nohup dockerd > /var/log/litellm-lab-dockerd.log 2>&1 < /dev/null &
  fi
  for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && return 0
    sleep 1
  done
  echo "dockerd did not start; see /var/log/litellm-lab-dockerd.log" >&2
  exit 1
}

ensure_lab_prerequisites() {
  require_root
  ensure_apt_packages
  ensure_venv
  ensure_dockerd
  "$REPO/scripts/build-image"
  mkdir -p "$LITELLM_LAB_DIR/secrets" /var/cache/litellm-lab/pip
  chmod 0700 "$LITELLM_LAB_DIR" "$LITELLM_LAB_DIR/secrets"
  export PATH="$VENV/bin:$PATH"
}

# .lab/lab.env: where the deployed lab answers, in shell syntax, for people and for every lab
# script (benchmarks/lab/labctl.py reads it). LAB_CA_FILE is the deployment CA (roles/pki) that
# clients verify the gateway's HTTPS certificate with.
write_lab_env() {
  local env_file="$LITELLM_LAB_DIR/lab.env"
  cat > "$env_file.tmp" <<ENV
# Written by scripts/lab-deploy and scripts/test; source it: . .lab/lab.env
# The URL clients use: HAProxy on hx-loadbalancer (TLS passed through to the gateways).
LAB_GATEWAY_URL=https://192.168.10.24:4000
# The first gateway itself, bypassing the balancer (fault drills, load and restore benchmarks
# measure this one gateway). Every gateway's own URL, in the order of LAB_GATEWAY_HOSTS:
LAB_GATEWAY_DIRECT_URL=https://192.168.10.18:4000
LAB_GATEWAY_HOSTS="hx-litellm-server hx-litellm-server-2"
LAB_GATEWAY_DIRECT_URLS="https://192.168.10.18:4000 https://192.168.10.23:4000"
LAB_BALANCER_HOST=hx-loadbalancer
LAB_BALANCER_STATS_URL=http://192.168.10.24:8404/stats
LAB_CA_FILE=$LITELLM_LAB_DIR/pki/ca.crt
LAB_SECRETS_DIR=$LITELLM_LAB_DIR/secrets
LAB_NETWORK=litellm-lab
LAB_GATEWAY_HOST=hx-litellm-server
LAB_POSTGRES_HOST=hx-postgres-server
LAB_POSTGRES_ADDRESS=192.168.10.19
# Hot standby of hx-postgres-server (streaming replication; playbooks/failover.yml promotes it).
LAB_POSTGRES_STANDBY_HOST=hx-postgres-standby
LAB_POSTGRES_STANDBY_ADDRESS=192.168.10.25
LAB_UPSTREAM_URL=http://192.168.10.20:8080
# Prometheus text of every gateway worker; send the scrape token (secrets/metrics_token).
LAB_METRICS_URL=http://192.168.10.18:9464/metrics
LAB_METRICS_TOKEN_FILE=$LITELLM_LAB_DIR/secrets/metrics_token
# Prometheus and Alertmanager on the monitoring host (no secret needed to read them).
LAB_MONITORING_HOST=hx-monitoring-server
LAB_PROMETHEUS_URL=http://192.168.10.21:9090
LAB_ALERTMANAGER_URL=http://192.168.10.21:9093
ENV
  chmod 0600 "$env_file.tmp" && mv "$env_file.tmp" "$env_file"
}

# Fail when a playbook run's recap reports any change (idempotence, --check --diff), naming the
# tasks that changed.
assert_no_changes() {
  local recap
  recap=$(sed 's/\x1b\[[0-9;]*m//g' "$1" | grep -E '[^ ]+ +: ok=[0-9]+ +changed=[0-9]+' || true)
  [ -n "$recap" ] || { echo "no play recap found in $1" >&2; return 1; }
  if grep -Eq 'changed=[1-9]' <<<"$recap"; then
    echo "expected changed=0, got:" >&2; echo "$recap" >&2
    sed 's/\x1b\[[0-9;]*m//g' "$1" | awk '/^TASK \[/ { task = $0; sub(/ \*+$/, "", task) }
      /^changed: \[/ { sub(/ => .*/, ""); print "  " task ": " $0 }' >&2
    return 1
  fi
}

# `molecule converge` with -v --diff, its whole output kept in LOG (0600, in .lab/): the verify
# stage scans these logs for secrets instead of converging once more. Stdout gets the short view
# (plays, tasks, each host's result without its body, the recap); on failure the log's end too.
converge_verbose() {
  local log=$1 rc=0
  shift
  install -m 0600 /dev/null "$log"
  molecule converge -- -v --diff "$@" >> "$log" 2>&1 || rc=$?
  sed 's/\x1b\[[0-9;]*m//g' "$log" \
    | grep -E '^(PLAY|TASK|RUNNING HANDLER|(ok|changed|skipping|included|fatal|failed): )|: ok=[0-9]+ ' \
    | sed -E 's/^((ok|changed|skipping|included): [^ ]+) => .*/\1/'
  if [ "$rc" -ne 0 ]; then
    printf '\nconverge failed (exit %d); the end of %s:\n' "$rc" "$log"
    tail -n 150 "$log"
  fi
  return "$rc"
}
