#!/usr/bin/env bash
# One idempotent setup for a fresh Debian machine of the project's kind (and for CI):
#   - apt packages the build, the tests and CRIU need;
#   - a working CRIU >= 4.2 carrying ferry's patches (scripts/criu/*.patch: post-copy's lazy dump
#     reads the frozen task's memory instead of splicing it all into pipes; the kernel probes are
#     cached outside a tmpfs, per boot; the lazy-pages daemon keeps several background requests
#     in flight and sleeps while they are out; per page pipe buffer log lines only at -v5; smaps
#     the agent read before the freeze are read from $CRIU_SMAPS_DIR; a failed restore reaps the
#     tasks it traced instead of waiting for ever; without CAP_SYS_RESOURCE another user's rlimits
#     are read from /proc/PID/limits and a hard limit the restore cannot raise is capped),
#     built from CRIU 4.2.1, the release the patches are made for (pinned: Debian's orig tarball,
#     checked by sha256, from the mirror's sid or testing source packages, else
#     snapshot.debian.org, else put by hand in /var/cache/ferry/criu-build/), and installed to
#     /usr/local/sbin/criu unless it is already there (its `criu --version` says
#     "GitID: 4.2.1+ferry.<id of the patches>"); a stock CRIU >= 4.2 that passes `criu check` is
#     the fallback if the build fails (everything works, post-copy freezes longer);
#   - Garage 2.5.0, the S3 server tests/objstore.rs runs against, built with cargo install into
#     /usr/local/bin unless a garage there (or on PATH) reports 2.5.0;
#   - kernel knobs the agent relies on;
#   - the Rust workspace built (release), and `ferry` and `ferry-init` installed from it into
#     /usr/local/bin (replaced when the build differs).
# A second run only verifies and takes seconds.
#
# Environment:
#   FERRY_SETUP_SKIP_BUILD=1   do not build the Rust workspace (nor install ferry)
#   FERRY_BIN_DIR              where ferry and ferry-init are installed (default /usr/local/bin)
#   FERRY_CRIU_PREFIX          where a built CRIU is installed (default /usr/local)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
prefix=${FERRY_CRIU_PREFIX:-/usr/local}
bindir=${FERRY_BIN_DIR:-/usr/local/bin}
want_major=4
want_minor=2

log() { printf '[setup] %s\n' "$*" >&2; }
die() { printf '[setup] error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (apt packages and CRIU are installed system-wide)"

# ---------------------------------------------------------------------------------------------
# apt packages
# ---------------------------------------------------------------------------------------------
runtime_pkgs=(iproute2 iptables nftables zstd tar python3 gcc libc6-dev make pkg-config procps curl ca-certificates
  util-linux netcat-openbsd vagrant vagrant-libvirt chromium tcpdump
  postgresql # tests/users.rs migrates a PostgreSQL server
  tmux redis-server memcached nginx nodejs default-jre-headless) # tests/migrate.rs migrates a tmux server (a pane on its pseudo-terminal), tests/zoo.rs these applications
criu_build_pkgs=(libprotobuf-dev libprotobuf-c-dev protobuf-c-compiler protobuf-compiler python3-protobuf
  libnl-3-dev libnet1-dev libcap-dev libbsd-dev uuid-dev libaio-dev libgnutls28-dev libnftables-dev
  xz-utils patch)

missing_pkgs() {
  local p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || printf '%s\n' "$p"
  done
}

apt_updated=0
apt_install() {
  local missing
  mapfile -t missing < <(missing_pkgs "$@")
  [ "${#missing[@]}" -eq 0 ] && return 0
  if [ "$apt_updated" -eq 0 ]; then
    log "apt-get update"
    apt-get update -qq
    apt_updated=1
  fi
  log "installing: ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

apt_install "${runtime_pkgs[@]}"

# ---------------------------------------------------------------------------------------------
# CRIU >= 4.2
# ---------------------------------------------------------------------------------------------
# criu_ok PATH: the binary reports a version >= 4.2 and `criu check` passes.
criu_ok() {
  local bin=$1 ver major minor
  [ -x "$bin" ] || return 1
  ver=$("$bin" --version 2>/dev/null | sed -n 's/^Version: *//p' | head -n1)
  [ -n "$ver" ] || return 1
  major=${ver%%.*}
  minor=${ver#*.}
  minor=${minor%%.*}
  if [ "$major" -lt "$want_major" ] || { [ "$major" -eq "$want_major" ] && [ "$minor" -lt "$want_minor" ]; }; then
    log "$bin is CRIU $ver, older than $want_major.$want_minor"
    return 1
  fi
  if ! "$bin" check >/dev/null 2>&1; then
    log "$bin (CRIU $ver) fails 'criu check'"
    return 1
  fi
  log "$bin is CRIU $ver and 'criu check' passes"
  return 0
}

# The CRIU release the patches are made for, pinned: a newer one may not take them. Its source is
# Debian's orig tarball of it, checked against these digests wherever it comes from.
criu_version=4.2.1
criu_orig=criu_${criu_version}.orig.tar.xz
criu_orig_sha256=29ec0ee09e296479fe7048c80980e8ef1d0684d0b0204c2b101dfea19f6725b9
criu_orig_sha1=943aa42a53e9678fee0c8cb85c544afa2d331229 # snapshot.debian.org names files by it
# Debian suites searched for a source package of that release, on the machine's own mirror (sid
# carries a release first, testing keeps it a while longer; snapshot.debian.org after that).
criu_suites=(sid testing)
criu_work=/var/cache/ferry/criu-build
criu_fetch_why=""

# The patches ferry's CRIU carries, and the mark a build with them gets: GitID <version>+ferry.<id>,
# the id from the patches' contents, so a changed patch or another pinned version is built again.
criu_patches=("$here"/scripts/criu/*.patch)
criu_patch_id=$(cat "${criu_patches[@]}" | sha256sum | cut -c1-12)
criu_patched() {
  "$1" --version 2>/dev/null | grep -qE "^GitID: ${criu_version//./\\.}\+ferry\.${criu_patch_id}\$"
}

# criu_mirror: the machine's Debian mirror, from its apt sources.
criu_mirror() {
  local uri
  uri=$(grep -rhoE '^URIs:[[:space:]]*\S+' /etc/apt/sources.list.d/*.sources 2>/dev/null \
    | awk '{print $2}' | grep -v -- '-security' | head -n1 || true)
  if [ -z "$uri" ]; then
    uri=$(grep -hoE '^deb[[:space:]]+(\[[^]]*\][[:space:]]+)?\S+' /etc/apt/sources.list 2>/dev/null \
      | awk '{print $NF}' | grep -v -- '-security' | head -n1 || true)
  fi
  printf '%s\n' "$uri"
}

# criu_apt_setup URI: a private apt state (options in $criu_aptopts) with deb-src entries for
# $criu_suites on URI, so the system's sources are left untouched.
criu_apt_setup() {
  local aptdir=$criu_work/apt s
  mkdir -p "$aptdir/lists/partial" "$aptdir/cache/archives/partial"
  : >"$aptdir/sources.list"
  for s in "${criu_suites[@]}"; do
    printf 'deb-src [trusted=yes] %s %s main\n' "$1" "$s" >>"$aptdir/sources.list"
  done
  criu_aptopts=(-o "Dir::Etc::SourceList=$aptdir/sources.list" -o "Dir::Etc::SourceParts=-"
    -o "Dir::State::Lists=$aptdir/lists" -o "Dir::Cache=$aptdir/cache" -o "APT::Sandbox::User=root")
}

# criu_source_version: the newest Debian source version of criu in the private apt state whose
# upstream part is $criu_version (4.2.1-1, 4.2.1-2, ...), or nothing.
criu_source_version() {
  apt-cache "${criu_aptopts[@]}" showsrc criu 2>/dev/null | sed -n 's/^Version: *//p' \
    | while read -r v; do
      u=${v#*:}
      [ "${u%-*}" = "$criu_version" ] && printf '%s\n' "$v"
    done | sort -V | tail -n1
}

# criu_orig_ok FILE: FILE is the pinned orig tarball.
criu_orig_ok() {
  [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$criu_orig_sha256" ]
}

# fetch_criu_orig: puts the pinned orig tarball at $criu_work/$criu_orig: kept from an earlier
# run (or put there by hand), else a source package of $criu_version from $criu_suites, else
# snapshot.debian.org, which keeps every file Debian ever published. Each is checked by sha256.
# On failure, says why in $criu_fetch_why.
fetch_criu_orig() {
  local orig=$criu_work/$criu_orig uri v tried=()
  mkdir -p "$criu_work"
  criu_orig_ok "$orig" && return 0
  rm -f "$orig"
  uri=$(criu_mirror)
  if [ -n "$uri" ]; then
    criu_apt_setup "$uri"
    log "looking for CRIU $criu_version's source package in ${criu_suites[*]} on $uri"
    apt-get "${criu_aptopts[@]}" update -qq >/dev/null 2>&1 || true
    v=$(criu_source_version)
    if [ -n "$v" ]; then
      log "fetching criu $v's source package"
      (cd "$criu_work" && apt-get "${criu_aptopts[@]}" source --download-only "criu=$v" >/dev/null 2>&1) || true
      criu_orig_ok "$orig" && return 0
      tried+=("criu $v from $uri: download failed or $criu_orig has the wrong sha256")
      rm -f "$orig"
    else
      tried+=("no criu $criu_version source package in ${criu_suites[*]} on $uri")
    fi
  else
    tried+=("no Debian mirror found in /etc/apt/sources.list*")
  fi
  local snap=https://snapshot.debian.org/file/$criu_orig_sha1
  log "fetching $criu_orig from $snap"
  if curl -fsSL --retry 2 --connect-timeout 20 -o "$orig.part" "$snap" && criu_orig_ok "$orig.part"; then
    mv -f "$orig.part" "$orig"
    return 0
  fi
  rm -f "$orig.part"
  tried+=("$snap: unreachable or not the pinned file")
  criu_fetch_why="CRIU $criu_version's source ($criu_orig, sha256 $criu_orig_sha256) could not be fetched: $(IFS=';'; echo "${tried[*]}" | sed 's/;/; /g'). Put that file in $criu_work/ and run again"
  return 1
}

# build_criu: builds CRIU $criu_version (with ferry's patches when they apply) and installs it
# to $prefix/sbin. Returns 1, with the reason in $criu_fetch_why, when it cannot.
build_criu() {
  apt_install "${criu_build_pkgs[@]}"
  local work=$criu_work
  if ! fetch_criu_orig; then
    log "$criu_fetch_why"
    return 1
  fi
  local orig=$work/$criu_orig
  local version=$criu_version src=$work/src gitid="" p
  rm -rf "$src"
  mkdir -p "$src"
  tar -xf "$orig" -C "$src" --strip-components=1
  for p in "${criu_patches[@]}"; do
    if ! patch -p1 -s -d "$src" <"$p" >>"$work/build.log" 2>&1; then
      log "warning: $(basename "$p") does not apply to CRIU $version (scripts/criu/ is made for it); building it unpatched"
      rm -rf "$src" && mkdir -p "$src" && tar -xf "$orig" -C "$src" --strip-components=1
      gitid=none
      break
    fi
  done
  [ "$gitid" = none ] && gitid="" || gitid="$version+ferry.$criu_patch_id"
  log "building CRIU $version${gitid:+ with the ferry patches (GitID $gitid)}"
  if ! make -C "$src" -j"$(nproc)" criu ${gitid:+GITID="$gitid"} >"$work/build.log" 2>&1; then
    tail -n 40 "$work/build.log" >&2
    log "CRIU build failed; full log: $work/build.log"
    criu_fetch_why="CRIU $criu_version did not build (log: $work/build.log)"
    return 1
  fi
  install -D -m 0755 "$src/criu/criu" "$prefix/sbin/criu"
  log "installed $prefix/sbin/criu"
}

criu_bin=""
stock_bin=""
for candidate in "$prefix/sbin/criu" /usr/sbin/criu /usr/local/sbin/criu $(command -v criu 2>/dev/null || true); do
  criu_ok "$candidate" || continue
  if criu_patched "$candidate"; then criu_bin=$candidate; break; fi
  [ -n "$stock_bin" ] || stock_bin=$candidate
done
if [ -z "$criu_bin" ]; then
  if build_criu && criu_ok "$prefix/sbin/criu"; then
    criu_bin=$prefix/sbin/criu
    criu_patched "$criu_bin" || log "warning: $criu_bin is a stock CRIU: post-copy's freeze grows with memory"
  elif [ -n "$stock_bin" ]; then
    log "warning: using $stock_bin, a stock CRIU: post-copy's freeze grows with memory"
    criu_bin=$stock_bin
  else
    [ -n "$criu_fetch_why" ] || criu_fetch_why="the CRIU $criu_version built at $prefix/sbin/criu does not pass 'criu check'"
    die "no working CRIU. ${criu_fetch_why}. Nor is there a CRIU >= $want_major.$want_minor installed that passes 'criu check' (Debian bookworm's own is 3.17); install one, or make one of the above work."
  fi
fi
# The agent looks for `criu` on PATH; make sure the good one wins over an old distro binary.
if [ "$(command -v criu || true)" != "$criu_bin" ] && [ "$criu_bin" != /usr/local/sbin/criu ]; then
  ln -sf "$criu_bin" /usr/local/sbin/criu
fi

# ---------------------------------------------------------------------------------------------
# schemathesis (the REST API's schema-driven fuzzing in the tests), from PyPI
# ---------------------------------------------------------------------------------------------
if ! command -v schemathesis >/dev/null 2>&1; then
  log "installing schemathesis"
  python3 -m pip --version >/dev/null 2>&1 || apt_install python3-pip
  python3 -m pip install --quiet --disable-pip-version-check schemathesis >/dev/null 2>&1 \
    || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages schemathesis
  hash -r
fi
command -v schemathesis >/dev/null 2>&1 || die "schemathesis did not install (python3 -m pip install schemathesis)"

# ---------------------------------------------------------------------------------------------
# Garage (the S3 server tests/objstore.rs runs the object store backend against), from crates.io
# ---------------------------------------------------------------------------------------------
# Built with the lmdb database engine only (no sqlite, metrics or K2V: the least to compile; the
# tests' config says db_engine = "lmdb"): 716 s (about 12 minutes) measured on 2 cores shared with
# another build. Garage is AGPL-3.0: it only ever runs as a separate test server, nothing of it is
# linked into ferry.
garage_version=2.5.0
# `garage --version` says e.g. "garage cargo:2.5.0 [features: bundled-libs, lmdb]".
garage_ok() { [ -x "$1" ] && "$1" --version 2>/dev/null | grep -qE "(^|[^0-9.])${garage_version//./\\.}([^0-9.]|\$)"; }
garage_bin=$(command -v garage 2>/dev/null || true)
if ! { [ -n "$garage_bin" ] && garage_ok "$garage_bin"; } && ! garage_ok /usr/local/bin/garage; then
  command -v cargo >/dev/null || die "cargo is not installed (Garage, the tests' S3 server, is built with cargo install)"
  log "building Garage $garage_version with cargo install (about 12 minutes on 2 cores)"
  cargo install garage --version "$garage_version" --locked --root /usr/local --quiet \
    --no-default-features --features bundled-libs,lmdb \
    || die "cargo install garage --version $garage_version failed (its output is above)"
  garage_ok /usr/local/bin/garage || die "/usr/local/bin/garage does not report version $garage_version"
  log "installed /usr/local/bin/garage ($garage_version)"
fi

# ---------------------------------------------------------------------------------------------
# kernel knobs: lazy pages need bigger pipes without CAP_SYS_RESOURCE
# ---------------------------------------------------------------------------------------------
if [ "$(cat /proc/sys/fs/pipe-max-size)" -lt 4194304 ]; then
  echo 4194304 >/proc/sys/fs/pipe-max-size
fi

# ---------------------------------------------------------------------------------------------
# the dashboard (web/): npm packages and the build the gateway serves at /
# ---------------------------------------------------------------------------------------------
node_ok() { command -v node >/dev/null && node -e 'const [a,b]=process.versions.node.split(".").map(Number); process.exit(a>20||(a===20&&b>=19)?0:1)'; }
if ! node_ok; then
  apt_install nodejs npm
  node_ok || die "the dashboard needs Node.js >= 20.19 (found $(node --version 2>/dev/null || echo none)); install a newer nodejs"
fi
web=$here/web
if ! cmp -s "$web/package-lock.json" "$web/node_modules/.package-lock.json" 2>/dev/null; then
  log "npm ci (web/)"
  (cd "$web" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
fi
if [ ! -f "$web/dist/index.html" ] || [ -n "$(find "$web/src" "$web/index.html" "$web/package-lock.json" "$web/vite.config.ts" -newer "$web/dist/index.html" -print -quit)" ]; then
  log "building the dashboard (web/dist)"
  (cd "$web" && npm run --silent build >/dev/null)
fi

# ---------------------------------------------------------------------------------------------
# the Rust workspace
# ---------------------------------------------------------------------------------------------
if [ "${FERRY_SETUP_SKIP_BUILD:-0}" != 1 ]; then
  command -v cargo >/dev/null || die "cargo is not installed (the machine's Rust toolchain is expected)"
  log "building ferry (release)"
  (cd "$here" && cargo build --release --locked --quiet --bins)
  target_dir=$(cd "$here" && cargo metadata --format-version 1 --no-deps \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
  # On PATH: ferry, and ferry-init beside it (the agent runs the ferry-init next to its own
  # executable). Each replaced by a rename, only when it differs: a running one keeps its file.
  mkdir -p "$bindir"
  for b in ferry-init ferry; do
    [ -x "$target_dir/release/$b" ] || die "the build left no $target_dir/release/$b"
    if ! cmp -s "$target_dir/release/$b" "$bindir/$b"; then
      install -m 0755 "$target_dir/release/$b" "$bindir/.$b.new"
      mv -f "$bindir/.$b.new" "$bindir/$b"
      log "installed $bindir/$b"
    fi
  done
  log "ferry is $bindir/ferry (built in $target_dir/release)"
fi
log "done"
