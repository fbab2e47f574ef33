#!/usr/bin/env bash
# Provisions one lab VM: runtime packages, the host-built binaries, and ferry as a systemd unit.
# Usage: provision.sh ROLE NAME IP COORDINATOR_IP   (ROLE: coordinator | agent)
set -euo pipefail
role=$1 name=$2 ip=$3 coordinator=$4
export DEBIAN_FRONTEND=noninteractive
# CRIU's shared libraries and what workloads and ferry need at run time. The box that
# vagrant/build-box.sh builds has them all, so apt (and the network) is only used on other boxes.
pkgs=(iproute2 iptables nftables python3 curl libprotobuf-c1 libnl-3-200 libnet1 libbsd0 libcap2
  libaio1 libgnutls30 libnftables1 libuuid1)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing ${missing[*]}"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
install -m 0755 /tmp/ferry-bin/ferry /tmp/ferry-bin/ferry-init /usr/local/bin/
install -m 0755 /tmp/ferry-bin/criu /usr/local/sbin/criu
mkdir -p /opt/ferry/workloads && cp -r /tmp/ferry-workloads/* /opt/ferry/workloads/
echo 4194304 >/proc/sys/fs/pipe-max-size
echo "fs.pipe-max-size = 4194304" >/etc/sysctl.d/60-ferry.conf
# Mutual TLS (prepare.sh issued each VM's certificate from the lab's CA, which stays on the host;
# the Vagrantfile uploads only this VM's certificate and key, with the CA certificate).
tls=""
scheme=http
if [ -s "/tmp/ferry-bin/tls/$name.pem" ]; then
  install -d -m 0700 /etc/ferry/tls
  install -m 0644 /tmp/ferry-bin/tls/ca.pem "/tmp/ferry-bin/tls/$name.pem" /etc/ferry/tls/
  install -m 0600 "/tmp/ferry-bin/tls/$name-key.pem" /etc/ferry/tls/
  [ ! -s /tmp/ferry-bin/tls/cluster.key ] || install -m 0600 /tmp/ferry-bin/tls/cluster.key /etc/ferry/tls/
  tls="--tls-dir /etc/ferry/tls --tls-name $name"
  scheme=https
elif /usr/local/bin/ferry agent --help 2>/dev/null | grep -q -- '--tls-dir'; then
  # This ferry refuses plain TCP unless told --insecure: the VM needs its certificate.
  echo "no certificate for $name in vagrant/bin/tls/$name: run vagrant/prepare.sh (with the same FERRY_LAB_AGENTS)" >&2
  exit 1
fi

if [ "$role" = coordinator ]; then
  exec_line="/usr/local/bin/ferry coordinator --listen 0.0.0.0:50050 --http 0.0.0.0:5000 --data-dir /var/lib/ferry/coordinator $tls"
  # Workloads' own addresses (docs/network.md): the upper half of the lab network, on-link for
  # every VM and the host (the VMs and the host hold addresses of the lower half). A workload
  # gets one only when asked (`ferry run --network own`); the default stays the node's network.
  if /usr/local/bin/ferry coordinator --help 2>/dev/null | grep -q -- '--workload-cidr'; then
    exec_line="$exec_line --workload-cidr ${coordinator%.*}.128/25 --default-network node"
  fi
  # A ferry whose REST API needs bearer tokens: prepare.sh made the lab's token file.
  if [ -s /tmp/ferry-bin/api-tokens ]; then
    install -D -m 0600 /tmp/ferry-bin/api-tokens /etc/ferry/api-tokens
    exec_line="$exec_line --tokens /etc/ferry/api-tokens"
  fi
else
  if ! out=$(/usr/local/sbin/criu check 2>&1); then
    printf 'criu check fails on %s (%s):\n%s\n' "$name" "$(uname -r)" "$out" >&2
    exit 1
  fi
  echo "$name: $(/usr/local/sbin/criu --version | head -n1), criu check: $out"
  # A workload with its own address: the agent runs ip and nsenter, makes veth pairs and opens
  # /dev/net/tun (its hold device).
  modprobe tun 2>/dev/null || true
  for t in ip nsenter; do command -v "$t" >/dev/null || { echo "$name: no $t" >&2; exit 1; }; done
  [ -c /dev/net/tun ] || { echo "$name: no /dev/net/tun" >&2; exit 1; }
  exec_line="/usr/local/bin/ferry agent --listen $ip:50051 --node $name --coordinator $scheme://$coordinator:50050 --data-dir /var/lib/ferry/agent $tls"
fi
# The uploaded key and tokens are installed: no copies left in /tmp (owned by the ssh user).
rm -rf /tmp/ferry-bin/tls /tmp/ferry-bin/api-tokens
cat >/etc/systemd/system/ferry.service <<UNIT
[Unit]
Description=ferry $role
StartLimitIntervalSec=0
After=network-online.target
Wants=network-online.target

[Service]
ExecStart=$exec_line
Restart=on-failure
RestartSec=2
# Workloads outlive a restart of their agent's service.
KillMode=process

[Install]
WantedBy=multi-user.target
UNIT
systemctl daemon-reload
mkdir -p /var/lib/ferry
systemctl enable ferry.service
# restart, not start: a second provisioning run picks up new binaries.
systemctl restart ferry.service
sleep 2
systemctl is-active --quiet ferry.service || { journalctl -u ferry.service -n 30 --no-pager >&2; exit 1; }
echo "provisioned $name ($role) at $ip: $(systemctl is-active ferry.service)"
