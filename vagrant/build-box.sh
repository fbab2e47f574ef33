#!/usr/bin/env bash
# Builds a local Debian 12 Vagrant box for the libvirt provider, for machines that cannot
# download boxes: debootstrap → raw disk with one ext4 partition and GRUB → qcow2 → box
# (metadata.json, Vagrantfile, box.img) → `vagrant box add ferry/bookworm`. Needs root,
# debootstrap, qemu-utils, parted, grub-pc-bin. Takes about five minutes.
set -euo pipefail
[ "$(id -u)" -eq 0 ] || { echo "run as root" >&2; exit 1; }
name=${FERRY_LAB_BOX:-ferry/bookworm}
work=$(mktemp -d /var/tmp/ferry-box.XXXXXX)
mnt=$work/mnt
mirror=$(grep -rhoE '^URIs:[[:space:]]*\S+' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' | grep -v -- -security | head -n1)
mirror=${mirror:-$(awk '/^deb /{print $2; exit}' /etc/apt/sources.list)}
loop=""
cleanup() {
  umount -R "$mnt" 2>/dev/null || true
  [ -n "$loop" ] && losetup -d "$loop" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap qemu-utils parted grub-pc-bin e2fsprogs >/dev/null
truncate -s 8G "$work/disk.raw"
parted -s "$work/disk.raw" mklabel msdos mkpart primary ext4 1MiB 100% set 1 boot on
loop=$(losetup --show -fP "$work/disk.raw")
mkfs.ext4 -q -L root "${loop}p1"
mkdir -p "$mnt" && mount "${loop}p1" "$mnt"
debootstrap --include=linux-image-amd64,grub-pc,openssh-server,sudo,ifupdown,isc-dhcp-client,systemd-sysv \
  bookworm "$mnt" "$mirror"
for d in dev proc sys; do mount --rbind /$d "$mnt/$d"; done
cat >"$mnt/etc/fstab" <<FSTAB
LABEL=root / ext4 errors=remount-ro 0 1
FSTAB
printf 'auto lo\niface lo inet loopback\nallow-hotplug eth0\niface eth0 inet dhcp\n' >"$mnt/etc/network/interfaces"
chroot "$mnt" /bin/sh -eu <<'CHROOT'
echo vagrant-box >/etc/hostname
useradd -m -s /bin/bash vagrant
echo 'vagrant:vagrant' | chpasswd
echo 'vagrant ALL=(ALL) NOPASSWD:ALL' >/etc/sudoers.d/vagrant
mkdir -p /home/vagrant/.ssh
# Vagrant's well-known insecure key; vagrant replaces it on first boot.
echo 'ssh-rsa AAAAB3NzaC1yc2EAAAABIwAAAQEA6NF8iallvQVp22WDkTkyrtvp9eWW6A8YVr+kz4TjGYe7gHzIw+niNltGEFHzD8+v1I2YJ6oXevct1YeS0o9HZyN1Q9qgCgzUFtdOKLv6IedplqoPkcmF0aYet2PkEDo3MlTBckFXPITAMzF8dJSIFo9D8HfdOV0IAdx4O7PtixWKn5y2hMNG0zQPyUecp4pzC6kivAIhyfHilFR61RGL+GPXQ2MWZWFYbAGjyiYJnAmCP3NOTd0jMZEnDkbUvxhMmBYSdETk1rRgm+R4LOzFUGaHqHDLKLX+FIPKcF96hrucXzcWyLbIbEgE98OHlnVYCzRdK8jlqm8tehUc9c9WhQ== vagrant insecure public key' >/home/vagrant/.ssh/authorized_keys
chown -R vagrant:vagrant /home/vagrant/.ssh && chmod 700 /home/vagrant/.ssh && chmod 600 /home/vagrant/.ssh/authorized_keys
sed -i 's/^GRUB_CMDLINE_LINUX=.*/GRUB_CMDLINE_LINUX="net.ifnames=0 biosdevname=0 console=ttyS0"/' /etc/default/grub
update-grub
CHROOT
chroot "$mnt" grub-install --target=i386-pc "$loop"
umount -R "$mnt"
losetup -d "$loop"; loop=""
qemu-img convert -O qcow2 "$work/disk.raw" "$work/box.img"
printf '{"provider":"libvirt","format":"qcow2","virtual_size":8}\n' >"$work/metadata.json"
printf 'Vagrant.configure("2") do |c|\n  c.vm.provider :libvirt do |lv|\n    lv.driver = "kvm"\n  end\nend\n' >"$work/Vagrantfile"
tar -C "$work" -czf "$work/ferry-bookworm.box" metadata.json Vagrantfile box.img
vagrant box add --force --name "$name" "$work/ferry-bookworm.box"
echo "box $name added"
