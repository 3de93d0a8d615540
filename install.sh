#!/bin/sh
# install.sh: from a flashed device to a supervised, hardened edge-agent service in one command.
#
#   sudo ./install.sh [--device-id ID] [--broker HOST[:PORT]] [--ca FILE --cert FILE --key FILE]
#                     [--web-listen HOST:PORT] [--wheelhouse DIR] [--preset NAME] [--no-start]
#                     [--dry-run] [--root DIR] [--uninstall | --purge [--yes]]
#
# Installs the agent from this checkout (or a wheelhouse) into a venv under /opt/edge-agent, a
# system user `edge-agent`, /etc/edge-agent/config.yaml (only when absent: an operator's config is
# never overwritten) and the systemd unit from provisioning/systemd/, then starts it and reports.
# Running it again with the same inputs changes nothing and says so; a new checkout replaces the
# venv and restarts the service once. README "Install on a device" has the details.
#
# The whole body is in main(), called on the last line: a download cut short never half-runs.

set -eu

SERVICE=edge-agent
SERVICE_USER=edge-agent
PYTHON=${PYTHON:-python3}

usage() {
    sed -n '3,6p' "$0" | sed 's/^# \{0,1\}//'
    exit "${1:-0}"
}

say() { printf '%s\n' "$*"; }
warn() { printf 'install.sh: %s\n' "$*" >&2; }
die() { warn "$*"; exit 1; }

# A change to this machine: printed in --dry-run, done otherwise, and counted ("no change" at the end).
act() {
    CHANGES=$((CHANGES + 1))
    if [ "$DRY_RUN" = 1 ]; then
        say "would: $*"
        return 0
    fi
    say "+ $*"
    "$@"
}

# A command on the host itself (users, systemd, ownership): with --root only printed.
host() {
    if [ -n "$ROOT" ] || [ "$DRY_RUN" = 1 ]; then
        say "would run: $*"
        return 0
    fi
    "$@"
}

# Install $1 (a file) as $2 with mode $3 and owner $4, only if it differs.
put_file() {
    src=$1 dest=$2 mode=$3 owner=$4
    if [ -f "$dest" ] && cmp -s "$src" "$dest"; then
        return 0
    fi
    act install -m "$mode" "$src" "$dest"
    host chown "$owner" "$dest"
}

valid_name() { case $1 in ''|-*|*[!A-Za-z0-9_-]*) return 1 ;; *) [ "${#1}" -le 64 ] ;; esac }
valid_host() { case $1 in ''|-*|*[!A-Za-z0-9._-]*) return 1 ;; *) return 0 ;; esac }
valid_port() { case $1 in ''|*[!0-9]*) return 1 ;; *) [ "$1" -ge 1 ] && [ "$1" -le 65535 ] ;; esac }

parse_args() {
    while [ $# -gt 0 ]; do
        case $1 in
            --device-id) DEVICE_ID=${2:?}; shift ;;
            --broker) BROKER=${2:?}; shift ;;
            --ca) CA=${2:?}; shift ;;
            --cert) CERT=${2:?}; shift ;;
            --key) KEY=${2:?}; shift ;;
            --web-listen) WEB_LISTEN=${2:?}; shift ;;
            --wheelhouse) WHEELHOUSE=${2:?}; shift ;;
            --preset) PRESET=${2:?}; shift ;;
            --root) ROOT=${2:?}; shift ;;
            --no-start) NO_START=1 ;;
            --dry-run) DRY_RUN=1 ;;
            --uninstall) MODE=uninstall ;;
            --purge) MODE=purge ;;
            --yes) YES=1 ;;
            -h|--help) usage 0 ;;
            *) warn "unknown option: $1"; usage 2 ;;
        esac
        shift
    done
    if [ -n "$DEVICE_ID" ] && ! valid_name "$DEVICE_ID"; then
        die "--device-id: letters, digits, - and _ only (at most 64), not starting with -"
    fi
    if [ -n "$BROKER" ]; then
        BROKER_HOST=${BROKER%:*}
        BROKER_PORT=1883
        [ "$BROKER_HOST" != "$BROKER" ] && BROKER_PORT=${BROKER##*:}
        valid_host "$BROKER_HOST" || die "--broker: not a host name or address: $BROKER_HOST"
        valid_port "$BROKER_PORT" || die "--broker: not a port: $BROKER_PORT"
    fi
    if [ -n "$CERT" ] || [ -n "$KEY" ]; then
        if [ -z "$CERT" ] || [ -z "$KEY" ]; then die "--cert and --key go together"; fi
    fi
    for f in "$CA" "$CERT" "$KEY"; do
        [ -z "$f" ] || [ -r "$f" ] || die "cannot read $f"
    done
    case $WEB_LISTEN in
        *:*) valid_port "${WEB_LISTEN##*:}" || die "--web-listen: HOST:PORT, e.g. 0.0.0.0:8080" ;;
        *) die "--web-listen: HOST:PORT, e.g. 0.0.0.0:8080" ;;
    esac
    valid_host "${WEB_LISTEN%:*}" || die "--web-listen: not a host: ${WEB_LISTEN%:*}"
    if [ -n "$ROOT" ]; then
        [ "$DRY_RUN" = 1 ] || mkdir -p "$ROOT"
        [ ! -d "$ROOT" ] || ROOT=$(cd "$ROOT" && pwd)
    fi
}

# -- the platform ---------------------------------------------------------------------------
detect_platform() {
    board=""
    if [ -r /proc/device-tree/model ]; then
        board=$(tr -d '\000' < /proc/device-tree/model)
    fi
    if [ -f /etc/nv_tegra_release ] || dpkg-query -W nvidia-l4t-core >/dev/null 2>&1; then
        PLATFORM=jetson
        # JetPack's TensorRT and GStreamer-enabled OpenCV are system packages: the venv sees them
        VENV_FLAGS=--system-site-packages
        EXTRAS=jetson
        lower=$(printf '%s' "$board" | tr '[:upper:]' '[:lower:]')
        case $lower in
            *"orin nano"*) guess=jetson-orin-nano ;;
            *"orin nx"*) guess=jetson-orin-nx ;;
            *"agx orin"*) guess=jetson-agx-orin ;;
            *"xavier nx"*) guess=jetson-xavier-nx ;;
            *) guess=jetson-orin-nano ;;
        esac
    elif [ -r /proc/driver/nvidia/version ] || command -v nvidia-smi >/dev/null 2>&1; then
        PLATFORM=nvidia
        EXTRAS=gpu,tensorrt
        guess=x86-gpu
    else
        PLATFORM=cpu
        guess=cpu
    fi
    PRESET=${PRESET:-$guess}
    say "platform: $PLATFORM${board:+ ($board)}, preset $PRESET"
}

check_requirements() {
    missing=""
    command -v "$PYTHON" >/dev/null 2>&1 || die "missing: $PYTHON (apt install python3)"
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' ||
        die "Python 3.10 or newer needed, found $("$PYTHON" -V 2>&1)"
    "$PYTHON" -c 'import ensurepip, venv' 2>/dev/null || missing="$missing python3-venv"
    for tool in install cmp sha256sum find; do
        command -v "$tool" >/dev/null 2>&1 || missing="$missing $tool"
    done
    if [ -z "$ROOT" ] && [ "$DRY_RUN" = 0 ]; then
        [ "$(id -u)" = 0 ] || die "run as root (sudo ./install.sh), or try --dry-run / --root DIR"
        for tool in systemctl useradd; do
            command -v "$tool" >/dev/null 2>&1 || missing="$missing $tool"
        done
    fi
    [ -z "$missing" ] || die "missing:$missing (on Debian/Ubuntu/JetPack: apt install$missing)"
}

# -- the venv -------------------------------------------------------------------------------
# What is installed, as one hash: the source tree (or the wheelhouse), the extras and the flags.
source_stamp() {
    if [ -n "$WHEELHOUSE" ]; then
        tree=$WHEELHOUSE
    else
        tree=$SRC
    fi
    {
        printf '%s %s\n' "$EXTRAS" "$VENV_FLAGS"
        find "$tree" -mindepth 1 \( -name '.*' -o -name build -o -name '*.egg-info' -o -name __pycache__ \) -prune \
            -o -type f -exec sha256sum {} + | sed "s|  $tree/|  |" | LC_ALL=C sort -k2
    } | sha256sum | cut -c1-16
}

install_venv() {
    stamp=$(source_stamp)
    base=$ROOT/opt/edge-agent
    venv=$base/venv-$stamp
    current=""
    [ -L "$base/venv" ] && current=$(readlink "$base/venv")
    if [ "$current" = "venv-$stamp" ] && [ -x "$venv/bin/edge-agent" ]; then
        say "agent: up to date ($stamp)"
        return 0
    fi
    UPGRADED=1
    act mkdir -p "$base"
    [ -d "$venv" ] && act rm -rf "$venv"
    act "$PYTHON" -m venv $VENV_FLAGS "$venv"
    spec="$SRC"
    [ -n "$EXTRAS" ] && spec="${SRC}[$EXTRAS]"
    where=""
    if [ -n "$WHEELHOUSE" ]; then
        spec=edge-agent
        [ -n "$EXTRAS" ] && spec="edge-agent[$EXTRAS]"
        where="--no-index --find-links $WHEELHOUSE"
    fi
    # shellcheck disable=SC2086 # $where is two options or none
    act "$venv/bin/pip" install -q $where "$spec"
    if [ "$PLATFORM" = nvidia ]; then
        # onnxruntime and onnxruntime-gpu share one package directory: keep only the GPU build
        act "$venv/bin/pip" uninstall -q -y onnxruntime
        # shellcheck disable=SC2086
        act "$venv/bin/pip" install -q --force-reinstall --no-deps $where onnxruntime-gpu
    fi
    # switch at once (a symlink renamed over the old one), then drop the old venvs
    act ln -sfn "venv-$stamp" "$base/venv.new"
    act mv -T "$base/venv.new" "$base/venv"
    for old in "$base"/venv-*; do
        [ "$old" = "$venv" ] || [ ! -d "$old" ] || act rm -rf "$old"
    done
}

# -- user, config, unit ---------------------------------------------------------------------
ensure_user() {
    if [ -n "$ROOT" ]; then  # a staging root: the image's first boot (or its builder) makes the user
        host useradd --system --user-group --no-create-home --home-dir /var/lib/edge-agent \
            --shell /usr/sbin/nologin "$SERVICE_USER"
        host usermod -a -G video,render "$SERVICE_USER"
        return 0
    fi
    if ! getent passwd "$SERVICE_USER" >/dev/null 2>&1; then
        CHANGES=$((CHANGES + 1))
        host useradd --system --user-group --no-create-home --home-dir /var/lib/edge-agent \
            --shell /usr/sbin/nologin --comment "edge-agent camera analytics" "$SERVICE_USER"
    fi
    for group in video render; do
        if getent group "$group" >/dev/null 2>&1 && ! id -nG "$SERVICE_USER" 2>/dev/null | tr ' ' '\n' | grep -qx "$group"; then
            CHANGES=$((CHANGES + 1))
            host usermod -a -G "$group" "$SERVICE_USER"
        fi
    done
}

render_config() {
    out=$1
    if [ -n "$BROKER" ]; then
        mqtt="mqtt:\n  host: $BROKER_HOST\n  port: $BROKER_PORT"
        if [ -n "$CA" ] || [ -n "$CERT" ]; then
            mqtt="$mqtt\n  tls:"
            [ -n "$CA" ] && mqtt="$mqtt\n    ca_file: /etc/edge-agent/ca.pem"
            [ -n "$CERT" ] && mqtt="$mqtt\n    cert_file: /etc/edge-agent/device.pem\n    key_file: /etc/edge-agent/device.key"
        fi
    else
        mqtt="# mqtt: absent, no broker (set host, port, tls: README \"MQTT\"; or run install.sh --broker HOST)"
    fi
    if [ -n "$DEVICE_ID" ]; then
        device="device:\n  id: $DEVICE_ID"
    else
        device="# device: {id: ...}; absent: an id is generated once and kept in /var/lib/edge-agent/device_id"
    fi
    awk -v device="$device" -v mqtt="$mqtt" -v preset="$PRESET" -v listen="$WEB_LISTEN" '
        $0 == "@DEVICE@" { gsub(/\\n/, "\n", device); print device; next }
        $0 == "@MQTT@" { gsub(/\\n/, "\n", mqtt); print mqtt; next }
        { gsub(/@PRESET@/, preset); gsub(/@WEB_LISTEN@/, listen); print }' \
        "$SRC/provisioning/config.template.yaml" > "$out"
}

install_config() {
    etc=$ROOT/etc/edge-agent
    if [ ! -d "$etc" ]; then
        act mkdir -p "$etc"
        act chmod 0750 "$etc"
    fi
    host chown "root:$SERVICE_USER" "$etc"
    config=$etc/config.yaml
    if [ -f "$config" ]; then
        say "config: $config kept as it is"
    else
        render_config "$TMP/config.yaml"
        put_file "$TMP/config.yaml" "$config" 0640 "root:$SERVICE_USER"
        CONFIG_WRITTEN=1
    fi
    [ -z "$CA" ] || put_file "$CA" "$etc/ca.pem" 0644 "root:$SERVICE_USER"
    [ -z "$CERT" ] || put_file "$CERT" "$etc/device.pem" 0644 "root:$SERVICE_USER"
    [ -z "$KEY" ] || put_file "$KEY" "$etc/device.key" 0600 "$SERVICE_USER:$SERVICE_USER"
}

install_unit() {
    dir=$ROOT/etc/systemd/system
    [ -d "$dir" ] || act mkdir -p "$dir"
    before=$CHANGES
    put_file "$SRC/provisioning/systemd/$SERVICE.service" "$dir/$SERVICE.service" 0644 root:root
    [ "$CHANGES" = "$before" ] || UNIT_CHANGED=1
}

# -- start and report -----------------------------------------------------------------------
start_service() {
    if [ -n "$ROOT" ] || [ "$NO_START" = 1 ]; then
        host systemctl enable "$SERVICE"
        return 0
    fi
    [ "$UNIT_CHANGED" = 0 ] || host systemctl daemon-reload
    systemctl is-enabled --quiet "$SERVICE" 2>/dev/null || { CHANGES=$((CHANGES + 1)); host systemctl enable "$SERVICE"; }
    if ! systemctl is-active --quiet "$SERVICE"; then
        CHANGES=$((CHANGES + 1))
        host systemctl start "$SERVICE" || true
    elif [ "$UPGRADED" = 1 ] || [ "$UNIT_CHANGED" = 1 ]; then
        host systemctl restart "$SERVICE" || true
    fi
    [ "$DRY_RUN" = 1 ] && return 0
    i=0
    while ! systemctl is-active --quiet "$SERVICE"; do
        i=$((i + 1))
        if [ "$i" -gt 120 ] || systemctl is-failed --quiet "$SERVICE"; then
            warn "the service did not become ready; see: journalctl -u $SERVICE -n 50"
            systemctl status --no-pager "$SERVICE" >&2 || true
            return 1
        fi
        sleep 1
    done
    report
}

report() {
    bin=/opt/edge-agent/venv/bin/edge-agent
    config=/etc/edge-agent/config.yaml
    id=$(cat /var/lib/edge-agent/device_id 2>/dev/null || sed -n 's/^  id: \([A-Za-z0-9_-]*\)$/\1/p' "$config")
    listen=$(sed -n 's/^  listen: \(.*\)$/\1/p' "$config")
    host_part=${listen%:*}
    if [ "$host_part" = 0.0.0.0 ]; then
        host_part=$(hostname -I 2>/dev/null | cut -d' ' -f1)
    fi
    say "device id:   ${id:-unknown}"
    say "health page: http://${host_part:-127.0.0.1}:${listen##*:}/"
    if grep -q '^mqtt:' "$config"; then
        say "mqtt-check:  $(runuser -u "$SERVICE_USER" -- "$bin" mqtt-check --config "$config" 2>&1 | tail -n 1)"
    else
        say "mqtt-check:  no broker configured"
    fi
    # one word per engine: "onnxruntime-cpu fp32 ok, onnxruntime-cuda fp32 unavailable, ..."
    selftest=$(runuser -u "$SERVICE_USER" -- env HOME=/var/lib/edge-agent "$bin" selftest --config "$config" 2>&1 |
        awk 'NR > 1 && NF >= 3 && $1 != "GPU" { printf "%s%s %s %s", sep, $1, $2, $3; sep = ", " }')
    say "selftest:    ${selftest:-did not run}"
}

# -- uninstall ------------------------------------------------------------------------------
# Home Assistant keeps a retained discovery config for the device: remove it while the agent is still here
# (best effort: a broker out of reach is said, not fatal).
clear_homeassistant() {
    bin=$ROOT/opt/edge-agent/venv/bin/edge-agent
    config=$ROOT/etc/edge-agent/config.yaml
    [ -z "$ROOT" ] && [ -x "$bin" ] && [ -f "$config" ] && grep -q '^mqtt:' "$config" || return 0
    host runuser -u "$SERVICE_USER" -- timeout 30 "$bin" homeassistant clear --config "$config" ||
        warn "Home Assistant discovery not cleared (broker out of reach?): edge-agent homeassistant clear"
}

# -- uninstall ------------------------------------------------------------------------------
uninstall() {
    if [ "$MODE" = purge ] && [ "$YES" = 0 ] && [ "$DRY_RUN" = 0 ]; then
        [ -t 0 ] || die "--purge deletes the config and all stored data: add --yes to confirm"
        printf 'Delete /etc/edge-agent and /var/lib/edge-agent (config and every stored detection)? [y/N] '
        read -r answer
        case $answer in y|Y|yes) ;; *) die "nothing removed" ;; esac
    fi
    clear_homeassistant
    unit=$ROOT/etc/systemd/system/$SERVICE.service
    if [ -z "$ROOT" ] && command -v systemctl >/dev/null 2>&1 && [ -f "$unit" ]; then
        host systemctl disable --now "$SERVICE" || true
    fi
    [ ! -f "$unit" ] || act rm -f "$unit"
    if [ -z "$ROOT" ] && command -v systemctl >/dev/null 2>&1; then
        host systemctl daemon-reload || true
    fi
    [ ! -d "$ROOT/opt/edge-agent" ] || act rm -rf "$ROOT/opt/edge-agent"
    [ ! -d "$ROOT/var/cache/edge-agent" ] || act rm -rf "$ROOT/var/cache/edge-agent"
    if [ -n "$ROOT" ] || getent passwd "$SERVICE_USER" >/dev/null 2>&1; then
        host userdel "$SERVICE_USER"
    fi
    if [ "$MODE" = purge ]; then
        [ ! -d "$ROOT/etc/edge-agent" ] || act rm -rf "$ROOT/etc/edge-agent"
        [ ! -d "$ROOT/var/lib/edge-agent" ] || act rm -rf "$ROOT/var/lib/edge-agent"
    else
        say "kept: $ROOT/etc/edge-agent (config) and $ROOT/var/lib/edge-agent (data); --purge removes them"
    fi
}

main() {
    SRC=$(cd "$(dirname "$0")" && pwd)
    DEVICE_ID="" BROKER="" BROKER_HOST="" BROKER_PORT="" CA="" CERT="" KEY="" WHEELHOUSE="" PRESET=""
    WEB_LISTEN=0.0.0.0:8080 ROOT="" NO_START=0 DRY_RUN=0 MODE=install YES=0
    PLATFORM="" EXTRAS="" VENV_FLAGS="" CHANGES=0 UPGRADED=0 UNIT_CHANGED=0 CONFIG_WRITTEN=0
    parse_args "$@"
    if [ "$MODE" != install ]; then
        uninstall
        return 0
    fi
    [ -f "$SRC/pyproject.toml" ] || [ -n "$WHEELHOUSE" ] || die "run install.sh from the edge-agent checkout"
    TMP=$(mktemp -d)
    trap 'rm -rf "$TMP"' EXIT
    detect_platform
    check_requirements
    ensure_user
    install_venv
    install_config
    install_unit
    if [ -n "$ROOT" ] && [ "$DRY_RUN" = 0 ] && [ "$CONFIG_WRITTEN" = 1 ]; then
        # what the service will read must be valid before anything starts
        "$ROOT/opt/edge-agent/venv/bin/edge-agent" check --config "$ROOT/etc/edge-agent/config.yaml"
    fi
    start_service
    if [ "$CHANGES" = 0 ]; then
        say "no change"
    fi
}

main "$@"
