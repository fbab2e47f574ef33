#!/usr/bin/env bash
# Builds a local Debian 12 Vagrant box for the libvirt provider, for machines that cannot
# download boxes: debootstrap → raw disk with one ext4 partition and GRUB → qcow2 → box
# (metadata.json, Vagrantfile, box.img) → `vagrant box add ferry/bookworm`.
#
# The box already holds what the lab's provisioning needs at run time (CRIU's shared libraries,
# python3, iproute2, nftables, ...), so `vagrant up` provisions without network access.
# debootstrap uses the Debian mirror this machine's apt uses. Needs root; installs debootstrap,
# qemu-utils, parted, grub-pc-bin, e2fsprogs. Takes about five minutes.
#
#   FERRY_LAB_BOX      box name (default ferry/bookworm)
#   FERRY_LAB_BOX_OUT  where the .box file is kept (default /var/tmp/ferry-bookworm.box)
#   FERRY_LAB_MIRROR   Debian mirror (default: the first non-security one in /etc/apt/sources.list*)
set -euo pipefail
[ "$(id -u)" -eq 0 ] || { echo "run as root" >&2; exit 1; }
# Mount the image only in a private mount namespace. A process elsewhere that creates a mount
# namespace while the image is mounted in the host's (a container, a test's sandbox) gets its own
# copy of the mount, which keeps the filesystem alive after our umount: the image is then copied
# with its last writes unflushed and its journal unreplayed (GRUB, which ignores the journal,
# finds no grub.cfg).
if [ -z "${FERRY_BOX_NS:-}" ]; then
  export FERRY_BOX_NS=1
  exec unshare --mount --propagation private bash "$0" "$@"
fi
log() { printf '[build-box] %s\n' "$*" >&2; }
name=${FERRY_LAB_BOX:-ferry/bookworm}
out=${FERRY_LAB_BOX_OUT:-/var/tmp/ferry-bookworm.box}

# The mirror apt uses: deb822 .sources first, then one-line sources.list ("deb [opts] URI ...").
mirror=${FERRY_LAB_MIRROR:-}
if [ -z "$mirror" ]; then
  mirror=$(grep -hoE '^URIs:[[:space:]]*\S+' /etc/apt/sources.list.d/*.sources 2>/dev/null |
    awk '{print $2}' | grep -v -- '-security' | grep -i debian | head -n1 || true)
fi
if [ -z "$mirror" ]; then
  mirror=$(grep -hoE '^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?\S+' /etc/apt/sources.list 2>/dev/null |
    awk '{print $NF}' | grep -v -- '-security' | head -n1 || true)
fi
[ -n "$mirror" ] || { echo "no Debian mirror in /etc/apt/sources.list*; set FERRY_LAB_MIRROR" >&2; exit 1; }
log "mirror $mirror"

work=$(mktemp -d /var/tmp/ferry-box.XXXXXX)
mnt=$work/mnt
loop=""
cleanup() {
  if mountpoint -q "$mnt" 2>/dev/null; then umount -R "$mnt" || umount -R -l "$mnt" || true; fi
  if [ -n "$loop" ]; then partx -d "$loop" 2>/dev/null || true; losetup -d "$loop" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

tools=(debootstrap qemu-utils parted grub-pc-bin e2fsprogs)
missing=()
for p in "${tools[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

truncate -s 8G "$work/disk.raw"
parted -s "$work/disk.raw" mklabel msdos mkpart primary ext4 1MiB 100% set 1 boot on
loop=$(losetup --show -fP "$work/disk.raw")
for _ in $(seq 20); do [ -b "${loop}p1" ] && break; sleep 0.1; done
# Kernels without CONFIG_MSDOS_PARTITION do not scan the table: add the partition by hand.
[ -b "${loop}p1" ] || partx -a "$loop"
for _ in $(seq 20); do [ -b "${loop}p1" ] && break; sleep 0.1; done
[ -b "${loop}p1" ] || { echo "no partition device ${loop}p1 (losetup -P)" >&2; exit 1; }
mkfs.ext4 -q -L root "${loop}p1"
mkdir -p "$mnt" && mount "${loop}p1" "$mnt"

# Base system, boot loader, what vagrant needs (ssh, sudo, ifupdown for its network setup, dbus
# for hostnamectl), and the lab's run-time packages: CRIU's shared libraries (ldd criu: libbsd,
# gnutls, nftables, protobuf-c, libnl-3, libnet, libuuid), python3 for the workloads, iproute2,
# iptables and nftables for CRIU's network locking, curl.
pkgs=linux-image-amd64,grub-pc,openssh-server,sudo,ifupdown,isc-dhcp-client,systemd-sysv,dbus
pkgs+=,iproute2,iptables,nftables,python3,curl,ca-certificates,procps
pkgs+=,libprotobuf-c1,libnl-3-200,libnet1,libbsd0,libcap2,libaio1,libgnutls30,libnftables1,libuuid1
log "debootstrap bookworm"
DEBIAN_FRONTEND=noninteractive debootstrap --include="$pkgs" bookworm "$mnt" "$mirror" >"$work/debootstrap.log" 2>&1 || {
  tail -n 30 "$work/debootstrap.log" >&2
  exit 1
}
# rbind /dev, /proc, /sys as slaves so unmounting them here never propagates to the host.
for d in dev proc sys; do
  mkdir -p "$mnt/$d"
  mount --rbind "/$d" "$mnt/$d"
  mount --make-rslave "$mnt/$d"
done
cat >"$mnt/etc/fstab" <<FSTAB
LABEL=root / ext4 errors=remount-ro 0 1
FSTAB
printf 'auto lo\niface lo inet loopback\n\nallow-hotplug eth0\niface eth0 inet dhcp\n' >"$mnt/etc/network/interfaces"
printf 'deb %s bookworm main\n' "$mirror" >"$mnt/etc/apt/sources.list"
# All boxes would share the host keys generated during debootstrap: regenerate them on first boot.
rm -f "$mnt"/etc/ssh/ssh_host_*
cat >"$mnt/etc/systemd/system/ssh-host-keys.service" <<'UNIT'
[Unit]
Description=Generate SSH host keys on first boot
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key
Before=ssh.service

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A

[Install]
WantedBy=multi-user.target
UNIT
log "configuring the image"
chroot "$mnt" /bin/sh -eu <<'CHROOT'
echo vagrant-box >/etc/hostname
printf '127.0.0.1\tlocalhost\n127.0.1.1\tvagrant-box\n' >/etc/hosts
useradd -m -s /bin/bash vagrant
echo 'vagrant:vagrant' | chpasswd
echo 'vagrant ALL=(ALL) NOPASSWD:ALL' >/etc/sudoers.d/vagrant
chmod 0440 /etc/sudoers.d/vagrant
mkdir -p /home/vagrant/.ssh
# Vagrant's well-known insecure key; vagrant replaces it on first boot.
echo 'ssh-rsa AAAAB3NzaC1yc2EAAAABIwAAAQEA6NF8iallvQVp22WDkTkyrtvp9eWW6A8YVr+kz4TjGYe7gHzIw+niNltGEFHzD8+v1I2YJ6oXevct1YeS0o9HZyN1Q9qgCgzUFtdOKLv6IedplqoPkcmF0aYet2PkEDo3MlTBckFXPITAMzF8dJSIFo9D8HfdOV0IAdx4O7PtixWKn5y2hMNG0zQPyUecp4pzC6kivAIhyfHilFR61RGL+GPXQ2MWZWFYbAGjyiYJnAmCP3NOTd0jMZEnDkbUvxhMmBYSdETk1rRgm+R4LOzFUGaHqHDLKLX+FIPKcF96hrucXzcWyLbIbEgE98OHlnVYCzRdK8jlqm8tehUc9c9WhQ== vagrant insecure public key' >/home/vagrant/.ssh/authorized_keys
chown -R vagrant:vagrant /home/vagrant/.ssh && chmod 700 /home/vagrant/.ssh && chmod 600 /home/vagrant/.ssh/authorized_keys
echo 'UseDNS no' >/etc/ssh/sshd_config.d/vagrant.conf
systemctl enable ssh-host-keys.service
# root=LABEL=root comes after the root= that grub-mkconfig derives from the loop device in this
# chroot, and the last root= wins (kernel and initramfs alike).
sed -i 's/^GRUB_CMDLINE_LINUX=.*/GRUB_CMDLINE_LINUX="root=LABEL=root net.ifnames=0 biosdevname=0 console=tty0 console=ttyS0"/' /etc/default/grub
sed -i 's/^GRUB_TIMEOUT=.*/GRUB_TIMEOUT=1/' /etc/default/grub
apt-get clean
rm -rf /var/lib/apt/lists/*
CHROOT
chroot "$mnt" grub-install --target=i386-pc "$loop" >"$work/grub.log" 2>&1 || { cat "$work/grub.log" >&2; exit 1; }
chroot "$mnt" update-grub >>"$work/grub.log" 2>&1 || { cat "$work/grub.log" >&2; exit 1; }
grep -q 'root=LABEL=root' "$mnt/boot/grub/grub.cfg" || { echo "grub.cfg lacks root=LABEL=root" >&2; exit 1; }
sync -f "$mnt"
umount -R "$mnt"
# The filesystem must really be gone (no other mount of it anywhere) and clean before the copy.
part=$(basename "${loop}p1")
for _ in $(seq 30); do [ -e "/sys/fs/ext4/$part" ] || break; sleep 1; done
[ ! -e "/sys/fs/ext4/$part" ] || { echo "${loop}p1 is still mounted in another mount namespace" >&2; exit 1; }
e2fsck -f -y "${loop}p1" >"$work/fsck.log" 2>&1 || [ $? -le 1 ] || { cat "$work/fsck.log" >&2; exit 1; }
partx -d "$loop" 2>/dev/null || true
losetup -d "$loop"; loop=""
log "qcow2 and box"
qemu-img convert -O qcow2 "$work/disk.raw" "$work/box.img"
rm -f "$work/disk.raw"
printf '{"provider":"libvirt","format":"qcow2","virtual_size":8}\n' >"$work/metadata.json"
printf 'Vagrant.configure("2") do |c|\n  c.vm.provider :libvirt do |lv|\n    lv.disk_bus = "virtio"\n  end\nend\n' >"$work/Vagrantfile"
# Uncompressed: the qcow2 is already sparse, and gzip would cost minutes of CPU here.
tar -C "$work" -cf "$out" metadata.json Vagrantfile box.img
vagrant box add --force --name "$name" "$out"
log "box $name added (file kept at $out, $(du -h "$out" | cut -f1))"
