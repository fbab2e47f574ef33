#!/usr/bin/env bash
# Provisions one lab VM: runtime packages, the host-built binaries, and ferry as a systemd unit.
# Usage: provision.sh ROLE NAME IP COORDINATOR_IP   (ROLE: coordinator | agent)
set -euo pipefail
role=$1 name=$2 ip=$3 coordinator=$4
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# CRIU's shared libraries and what workloads and ferry need at run time.
apt-get install -y -qq --no-install-recommends iproute2 iptables nftables python3 curl \
  libprotobuf-c1 libnl-3-200 libnet1 libbsd0 libcap2 libaio1 libgnutls30 libnftables1 >/dev/null
install -m 0755 /tmp/ferry-bin/ferry /tmp/ferry-bin/ferry-init /usr/local/bin/
install -m 0755 /tmp/ferry-bin/criu /usr/local/sbin/criu
mkdir -p /opt/ferry/workloads && cp -r /tmp/ferry-workloads/* /opt/ferry/workloads/
echo 4194304 >/proc/sys/fs/pipe-max-size
echo "fs.pipe-max-size = 4194304" >/etc/sysctl.d/60-ferry.conf

if [ "$role" = coordinator ]; then
  exec_line="/usr/local/bin/ferry coordinator --listen 0.0.0.0:50050 --http 0.0.0.0:5000 --data-dir /var/lib/ferry/coordinator"
else
  /usr/local/sbin/criu check >/dev/null || { echo "criu check fails on $name" >&2; exit 1; }
  exec_line="/usr/local/bin/ferry agent --listen $ip:50051 --node $name --coordinator http://$coordinator:50050 --data-dir /var/lib/ferry/agent"
fi
cat >/etc/systemd/system/ferry.service <<UNIT
[Unit]
Description=ferry $role
After=network-online.target
Wants=network-online.target

[Service]
ExecStart=$exec_line
Restart=on-failure
# Workloads outlive a restart of their agent's service.
KillMode=process

[Install]
WantedBy=multi-user.target
UNIT
systemctl daemon-reload
systemctl enable --now ferry.service
echo "provisioned $name ($role) at $ip"
