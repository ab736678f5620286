#!/usr/bin/env bash
# Installs kube-cni on one kubeadm or hand-built node: the plugin into the CNI bin dir, and the node's
# conflist into the CNI conf dir. This replaces the seed's by-hand steps (write the conf with the node's
# PodCIDR, brctl addbr, ip addr add, iptables, copy the script): the plugin creates the bridge and the node
# rules itself on the first pod, and `kube-cni routes` makes the routes to other nodes.
#
# Both files are written to a temp file beside them and renamed, so a kubelet never reads half a file.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: sudo ./install.sh [OPTION]...
  --subnet CIDR[,CIDR]   this node's podCIDR(s); default: spec.podCIDRs of this node, from kubectl
  --network CIDR[,CIDR]  the cluster's pod range(s); default: networking.podSubnet of kubeadm's ClusterConfiguration
  --node NAME            this node's name in Kubernetes; default: hostname
  --kubectl PATH         the kubectl to ask; default: kubectl on PATH
  --cni-bin-dir DIR      where runtimes look for plugins; default: /opt/cni/bin
  --cni-conf-dir DIR     where runtimes look for network configs; default: /etc/cni/net.d
  --root DIR             stage everything under DIR and change nothing else on this machine
  --uninstall            remove what this script installs, and nothing else
  --dry-run              say what would be done, and write nothing
  -h, --help             this text
An option's value follows it (--node n1) or is joined with = (--node=n1).
EOF
}

die() { echo "install.sh: $*" >&2; exit 1; }
say() { echo "install.sh: $*" >&2; }
usage_error() { echo "install.sh: $*" >&2; echo "Run ./install.sh --help for every option." >&2; exit 2; }

here=$(cd "$(dirname "$0")" && pwd)
subnet='' network='' node_name='' kubectl='kubectl' root='' bin_dir='/opt/cni/bin' conf_dir='/etc/cni/net.d'
uninstall=0 dry_run=0
while [ $# -gt 0 ]; do
  opt=$1
  case "$opt" in
    --*=*) shift; set -- "${opt%%=*}" "${opt#*=}" "$@"; continue ;;
    --subnet|--network|--node|--kubectl|--root|--cni-bin-dir|--cni-conf-dir)
      # A missing value must not swallow the next option as one.
      [ $# -ge 2 ] && [ -n "$2" ] && [ "${2#-}" = "$2" ] || usage_error "$opt needs a value (e.g. $opt=...)"
      case "$opt" in
        --subnet) subnet=$2 ;;
        --network) network=$2 ;;
        --node) node_name=$2 ;;
        --kubectl) kubectl=$2 ;;
        --root) root=$2 ;;
        --cni-bin-dir) bin_dir=$2 ;;
        --cni-conf-dir) conf_dir=$2 ;;
      esac
      shift 2 ;;
    --uninstall) uninstall=1; shift ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage_error "unknown option $opt" ;;
  esac
done

run() { if [ "$dry_run" = 1 ]; then echo "would run: $*"; else "$@"; fi; }
# did VERB DONE: what a step reports, in the conditional under --dry-run.
did() { if [ "$dry_run" = 1 ]; then echo "would $1"; else echo "$2"; fi; }

bin="$root$bin_dir/kube-cni"
conf="$root$conf_dir/10-kube-cni.conflist"

if [ "$uninstall" = 1 ]; then
  for f in "$bin" "$conf"; do
    if [ -e "$f" ]; then run rm -f "$f"; say "$(did remove removed) $f"; fi
  done
  exit 0
fi

# The plugin runs under the node's Node.js: the bundle's first line is `#!/usr/bin/env node`.
command -v node >/dev/null 2>&1 ||
  die "kube-cni needs Node.js >= 18 on this node, and there is no 'node' on PATH. Install it (Debian 12: sudo apt-get install -y nodejs), then run install.sh again."
node_major=$(node -p 'process.versions.node.split(".")[0]')
[ "$node_major" -ge 18 ] ||
  die "kube-cni needs Node.js >= 18, this node has $(node --version). Install a newer Node.js, then run install.sh again."

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

# This node's podCIDR(s), from the flag or from the cluster.
[ -n "$node_name" ] || node_name=$(hostname)
if [ -z "$subnet" ]; then
  if command -v "$kubectl" >/dev/null 2>&1; then
    subnet=$("$kubectl" get node "$node_name" -o jsonpath='{.spec.podCIDRs}' 2>/dev/null | tr -d '[]" ' || true)
    [ -n "$subnet" ] || subnet=$("$kubectl" get node "$node_name" -o jsonpath='{.spec.podCIDR}' 2>/dev/null || true)
  fi
  [ -n "$subnet" ] || die "cannot learn the podCIDR of node '$node_name'. Either
  - the cluster does not allocate pod ranges: create it with 'kubeadm init --pod-network-cidr=10.200.0.0/16', or
  - kubectl cannot reach it or knows this node by another name: pass --node NAME or --kubectl PATH, or
  - give it directly: sudo ./install.sh --subnet 10.200.1.0/24 --network 10.200.0.0/16
Nothing was written."
fi
if [ -z "$network" ] && command -v "$kubectl" >/dev/null 2>&1; then
  network=$("$kubectl" -n kube-system get configmap kubeadm-config -o jsonpath='{.data.ClusterConfiguration}' 2>/dev/null |
    sed -n 's/^ *podSubnet: *//p' | tr -d '"' | head -1 || true)
fi
[ -n "$network" ] || die "cannot learn the cluster's pod range (kubeadm's networking.podSubnet). Pass it: --network 10.200.0.0/16. Nothing was written."

# Render and validate the conflist before touching anything, so a bad range writes nothing.
conflist=$("${kube_cni[@]}" conflist --subnet "$subnet" --network "$network" --cni-bin-dir "$root$bin_dir") ||
  die "the podCIDR '$subnet' and pod range '$network' do not make a valid config (see above). Nothing was written."

# install SRC DEST MODE: copy to a temp file beside DEST, then rename over it; unchanged files stay untouched.
install_file() {
  local src=$1 dest=$2 mode=$3
  if [ -f "$dest" ] && cmp -s "$src" "$dest"; then say "$dest is up to date"; return; fi
  run mkdir -p "$(dirname "$dest")"
  run install -m "$mode" "$src" "$dest.tmp.$$"
  run mv -f "$dest.tmp.$$" "$dest"
  say "$(did install installed) $dest"
}

tmp=$(mktemp)
trap 'rm -f "$tmp"' EXIT
printf '%s\n' "$conflist" >"$tmp"
if [ "$dry_run" = 1 ] && [ ! -x "$bundle" ]; then say "would install $bin (once built)"; else install_file "$bundle" "$bin" 0755; fi
install_file "$tmp" "$conf" 0644
[ "$dry_run" = 1 ] && echo "$conflist"

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
say "routes to the other nodes: kube-cni routes --node $node_name --watch 10 (or apply deploy/kube-cni.yaml)"
