#!/usr/bin/env bash
# Installs kube-cni on one kubeadm or hand-built node: the plugin into the CNI bin dir, the node's conflist
# into the CNI conf dir, and the routes agent as a systemd service. This replaces the seed's by-hand steps
# (write the conf with the node's PodCIDR, brctl addbr, ip addr add, iptables, copy the script): the plugin
# creates the bridge and the node rules itself on the first pod, and `kube-cni routes` makes the routes to
# the other nodes.
#
# Every file is written to a temp file beside it and renamed, so a kubelet never reads half a file.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: sudo ./install.sh [OPTION]...
  --subnet CIDR[,CIDR]    this node's podCIDR(s); default: spec.podCIDRs of this node, through kubectl, else
                          through the kubelet's kubeconfig
  --network CIDR[,CIDR]   the cluster's pod range(s); default: networking.podSubnet of kubeadm's
                          ClusterConfiguration (readable with an admin kubectl: on a worker, give it)
  --node NAME             this node's name in Kubernetes; default: hostname
  --kubectl PATH          the kubectl to ask (and only it); default: kubectl on PATH, then --kubeconfig
  --kubeconfig FILE       how this node reaches the API; default: /etc/kubernetes/kubelet.conf (every
                          kubeadm node has it). Also what the routes agent uses.
  --backend host-gw|vxlan how the routes agent reaches the other nodes' pods; default: host-gw
  --no-routes             do not install the routes agent's systemd service
  --cni-bin-dir DIR       where runtimes look for plugins; default: /opt/cni/bin
  --cni-conf-dir DIR      where runtimes look for network configs; default: /etc/cni/net.d
  --systemd-unit-dir DIR  where the routes agent's unit goes; default: /etc/systemd/system
  --root DIR              stage every file under DIR as if it were /, run no systemctl, and change nothing
                          else on this machine (DIR/run/systemd/system says whether systemd runs)
  --uninstall             remove what this script installs, and nothing else
  --dry-run               say what would be done, and write nothing
  -h, --help              this text
An option's value follows it (--node n1) or is joined with = (--node=n1).
EOF
}

die() { echo "install.sh: $*" >&2; exit 1; }
say() { echo "install.sh: $*" >&2; }
usage_error() { echo "install.sh: $*" >&2; echo "Run ./install.sh --help for every option." >&2; exit 2; }

here=$(cd "$(dirname "$0")" && pwd)
subnet='' network='' node_name='' kubectl='' kubeconfig='/etc/kubernetes/kubelet.conf' backend='host-gw' root=''
bin_dir='/opt/cni/bin' conf_dir='/etc/cni/net.d' unit_dir='/etc/systemd/system'
routes=1 uninstall=0 dry_run=0
while [ $# -gt 0 ]; do
  opt=$1
  case "$opt" in
    --*=*) shift; set -- "${opt%%=*}" "${opt#*=}" "$@"; continue ;;
    --subnet|--network|--node|--kubectl|--kubeconfig|--backend|--root|--cni-bin-dir|--cni-conf-dir|--systemd-unit-dir)
      # A missing value must not swallow the next option as one.
      [ $# -ge 2 ] && [ -n "$2" ] && [ "${2#-}" = "$2" ] || usage_error "$opt needs a value (e.g. $opt=...)"
      case "$opt" in
        --subnet) subnet=$2 ;;
        --network) network=$2 ;;
        --node) node_name=$2 ;;
        --kubectl) kubectl=$2 ;;
        --kubeconfig) kubeconfig=$2 ;;
        --backend) backend=$2 ;;
        --root) root=$2 ;;
        --cni-bin-dir) bin_dir=$2 ;;
        --cni-conf-dir) conf_dir=$2 ;;
        --systemd-unit-dir) unit_dir=$2 ;;
      esac
      shift 2 ;;
    --no-routes) routes=0; shift ;;
    --uninstall) uninstall=1; shift ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage_error "unknown option $opt" ;;
  esac
done
case "$backend" in host-gw|vxlan) ;; *) usage_error "--backend is host-gw or vxlan, not '$backend'" ;; esac
[ "$routes" = 0 ] || case "$kubeconfig$bin_dir" in
  *[[:space:]%\"\'\\]*) usage_error "--kubeconfig and --cni-bin-dir go into the routes agent's systemd unit: give paths without spaces, quotes, % or \\" ;;
esac

run() { if [ "$dry_run" = 1 ]; then echo "would run: $*"; else "$@"; fi; }
# did VERB DONE: what a step reports, in the conditional under --dry-run.
did() { if [ "$dry_run" = 1 ]; then echo "would $1"; else echo "$2"; fi; }

bin="$root$bin_dir/kube-cni"
conf="$root$conf_dir/10-kube-cni.conflist"
unit_name='kube-cni-routes.service'
unit="$root$unit_dir/$unit_name"
# systemctl only ever acts on the live system: never under --root.
systemd_here=0
[ -d "$root/run/systemd/system" ] && systemd_here=1
live_systemd=0
[ -z "$root" ] && [ "$systemd_here" = 1 ] && live_systemd=1

if [ "$uninstall" = 1 ]; then
  if [ -e "$unit" ] && [ "$live_systemd" = 1 ]; then run systemctl disable --now "$unit_name" || true; fi
  # kube-cni.cache: the V8 code cache the plugin writes next to itself on its first ADD.
  for f in "$unit" "$bin" "$bin.cache" "$conf"; do
    if [ -e "$f" ]; then run rm -f "$f"; say "$(did remove removed) $f"; fi
  done
  [ "$live_systemd" = 1 ] && run systemctl daemon-reload
  exit 0
fi

# The plugin runs under the node's Node.js, named by its absolute path in the shebang: the runtime that execs
# the plugin has its own PATH, not this shell's.
command -v node >/dev/null 2>&1 ||
  die "kube-cni needs Node.js >= 18 on this node, and there is no 'node' on PATH. Install it (Debian 12: sudo apt-get install -y nodejs), then run install.sh again."
node_major=$(node -p 'process.versions.node.split(".")[0]')
[ "$node_major" -ge 18 ] ||
  die "kube-cni needs Node.js >= 18, this node has $(node --version). Install a newer Node.js, then run install.sh again."
node_path=$(node -p 'process.execPath')

# Build the bundle when it is missing or older than its sources; a dry run renders from the sources instead.
bundle="$here/dist/kube-cni"
kube_cni=(node "$bundle")
if [ ! -x "$bundle" ] || [ -n "$(find "$here/kube-cni.ts" "$here/lib" "$here/package.json" -newer "$bundle" 2>/dev/null | head -1)" ]; then
  [ -d "$here/node_modules" ] || die "dist/kube-cni must be built, and node_modules is missing: run 'npm ci' in $here first."
  if [ "$dry_run" = 1 ]; then
    say "would build dist/kube-cni (npm run build)"
    kube_cni=("$here/node_modules/.bin/tsx" "$here/kube-cni.ts")
  else
    say "building dist/kube-cni"
    (cd "$here" && npm run build --silent)
  fi
fi

# kubeadm registers the node under its hostname in lower case; the name also goes into the agent's unit.
[ -n "$node_name" ] || node_name=$(hostname | tr '[:upper:]' '[:lower:]')
[[ "$node_name" =~ ^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$ ]] || usage_error "'$node_name' is not a Kubernetes node name: pass --node NAME"

# An admin's kubectl answers on the control plane; a worker has only the kubelet's kubeconfig. Under sudo,
# root rarely has a ~/.kube/config, but the control plane has the admin.conf kubeadm init wrote.
if [ -z "${KUBECONFIG:-}" ] && [ ! -e "${HOME:-/root}/.kube/config" ] && [ -r /etc/kubernetes/admin.conf ]; then
  export KUBECONFIG=/etc/kubernetes/admin.conf
fi
kubectl_cmd=${kubectl:-kubectl}
has_kubectl=0
command -v "$kubectl_cmd" >/dev/null 2>&1 && has_kubectl=1
if [ -z "$network" ] && [ "$has_kubectl" = 1 ]; then
  network=$("$kubectl_cmd" -n kube-system get configmap kubeadm-config -o jsonpath='{.data.ClusterConfiguration}' 2>/dev/null |
    sed -n 's/^ *podSubnet: *//p' | tr -d '"' | head -1 || true)
fi
[ -n "$network" ] || die "cannot learn the cluster's pod range (kubeadm's networking.podSubnet: only an admin may read it, so on a worker
  give it). Pass it: --network 10.200.0.0/16, the value kubeadm init got as --pod-network-cidr. Nothing was written."

# This node's podCIDR(s), from the flag or from the cluster; then the conflist, rendered and validated before
# anything is touched, so a bad range writes nothing.
if [ -z "$subnet" ] && [ "$has_kubectl" = 1 ]; then
  subnet=$("$kubectl_cmd" get node "$node_name" -o jsonpath='{.spec.podCIDRs}' 2>/dev/null | tr -d '[]" ' || true)
  [ -n "$subnet" ] || subnet=$("$kubectl_cmd" get node "$node_name" -o jsonpath='{.spec.podCIDR}' 2>/dev/null || true)
fi
conflist_args=(conflist --network "$network" --cni-bin-dir "$root$bin_dir")
if [ -n "$subnet" ]; then
  conflist=$("${kube_cni[@]}" "${conflist_args[@]}" --subnet "$subnet") ||
    die "the podCIDR '$subnet' and pod range '$network' do not make a valid config (see above). Nothing was written."
elif [ -z "$kubectl" ] && [ -r "$kubeconfig" ]; then
  conflist=$(KUBECONFIG=$kubeconfig "${kube_cni[@]}" "${conflist_args[@]}" --node "$node_name") ||
    die "cannot learn the podCIDR of node '$node_name' through $kubeconfig (see above). Check the node's name (--node NAME),
  or give it directly: --subnet 10.200.1.0/24. Nothing was written."
  subnet=$(node -e 'const p = JSON.parse(require("fs").readFileSync(0, "utf8")).plugins[0]; console.log((p.subnets ?? [p.subnet]).join(","))' <<<"$conflist")
else
  die "cannot learn the podCIDR of node '$node_name'. Either
  - the cluster does not allocate pod ranges: create it with 'kubeadm init --pod-network-cidr=10.200.0.0/16', or
  - neither kubectl nor $kubeconfig can reach it, or it knows this node by another name: pass --node NAME,
    --kubectl PATH or --kubeconfig FILE, or
  - give it directly: sudo ./install.sh --subnet 10.200.1.0/24 --network 10.200.0.0/16
Nothing was written."
fi

changed=0
# install SRC DEST MODE: copy to a temp file beside DEST, then rename over it; unchanged files stay untouched.
install_file() {
  local src=$1 dest=$2 mode=$3
  if [ -f "$dest" ] && cmp -s "$src" "$dest"; then say "$dest is up to date"; return; fi
  run mkdir -p "$(dirname "$dest")"
  run install -m "$mode" "$src" "$dest.tmp.$$"
  run mv -f "$dest.tmp.$$" "$dest"
  say "$(did install installed) $dest"
  changed=1
}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if [ "$dry_run" = 1 ] && [ ! -x "$bundle" ]; then
  say "would install $bin (once built), run by $node_path"
else
  { echo "#!$node_path"; tail -n +2 "$bundle"; } >"$tmp/kube-cni"
  install_file "$tmp/kube-cni" "$bin" 0755
fi
printf '%s\n' "$conflist" >"$tmp/conflist"
install_file "$tmp/conflist" "$conf" 0644
[ "$dry_run" = 1 ] && echo "$conflist"

# The routes agent: a service, so that it survives a crash and a reboot.
# A bare --watch with a kubeconfig lists the Nodes once, then follows a watch; /healthz, /readyz and /metrics on
# the loopback only.
agent="$bin_dir/kube-cni routes --node $node_name --network $network --backend $backend --watch --metrics-addr 127.0.0.1:9101"
if [ "$routes" = 0 ]; then
  say "--no-routes: no routes agent. Routes to the other nodes come from elsewhere (or run: KUBECONFIG=$kubeconfig $agent)."
elif [ "$systemd_here" = 0 ]; then
  say "systemd is not running here, so no routes agent is set up. Run it under this node's init system:
  KUBECONFIG=$kubeconfig $agent
  or apply deploy/kube-cni.yaml, whose DaemonSet runs it."
else
  cat >"$tmp/unit" <<EOF
# Installed by kube-cni's install.sh; \`install.sh --uninstall\` removes it.
[Unit]
Description=kube-cni routes agent: routes to the other nodes' pod ranges
Wants=network-online.target
After=network-online.target

[Service]
# The kubelet's own credentials, which may list nodes.
Environment=KUBECONFIG=$kubeconfig
ExecStart=$agent
Restart=on-failure
RestartSec=5

[Install]
WantedBy=multi-user.target
EOF
  install_file "$tmp/unit" "$unit" 0644
  if [ "$live_systemd" = 1 ]; then
    run systemctl daemon-reload
    # The agent runs the plugin binary: a new one, or a new unit, needs a restart; otherwise start it if stopped.
    if [ "$changed" = 1 ]; then run systemctl enable "$unit_name"; run systemctl restart "$unit_name"
    else run systemctl enable --now "$unit_name"; fi
    say "routes agent: $(did 'run as' 'running as') $unit_name; its log: journalctl -u $unit_name -f"
  else
    say "routes agent $(did 'stage as' 'staged as') $unit; on the node: systemctl daemon-reload && systemctl enable --now $unit_name"
  fi
fi

# Runtimes (containerd, CRI-O, podman) use the first config in the conf dir by name, in byte order.
first=$({ ls -A "$root$conf_dir" 2>/dev/null || true; echo "${conf##*/}"; } | grep -E '\.(conf|conflist|json)$' | LC_ALL=C sort -u | head -1)
summary="node $node_name, podCIDR $subnet, cluster range $network"
if [ "$first" != "${conf##*/}" ]; then
  say "WARNING: $root$conf_dir/$first sorts before ${conf##*/}, and the container runtime uses the first config in
  $conf_dir: pods will keep using $first, not kube-cni. To switch, move it away (sudo mv $conf_dir/$first /root/),
  or uninstall that network plugin, then restart the pods."
  outcome="kube-cni is installed but NOT in use: $first comes first."
else
  outcome="Pods started from now on use kube-cni."
fi
if [ "$dry_run" = 1 ]; then say "dry run: nothing was written. Without --dry-run: $summary."
else say "done: $summary. $outcome"; fi
