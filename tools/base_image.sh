#!/usr/bin/env bash
# The Dockerfile's base image (its FROM line, python:3.11-slim), present in the local image store.
#
# Where the image is already there, nothing happens. Else the engine pulls it; where no container
# registry can be reached, a stand-in is made from Debian's packages and imported under the same
# name, so the Dockerfile builds unchanged:
#   mmdebstrap --variant=minbase bookworm with python3.11 and python3-venv, a venv at /opt/venv
#   first on PATH (`python` and `pip` as in the official image); no man pages, docs or locales, and
#   apt keeps no package cache files (as in Debian's official images).
#
#   tools/base_image.sh                 # DOCKER=podman (or docker) picks the engine; default: podman if present
#   tools/base_image.sh --stand-in      # make the stand-in even if a pull would work
#   tools/base_image.sh --force         # make it again even if the image is present
#
# Needs mmdebstrap (Debian's package) for the stand-in; as root it runs in its root mode, else in
# its unshare mode (which needs uidmap and subordinate ids). Takes about a minute.
set -euo pipefail
cd "$(dirname "$0")/.."

force=0
stand_in=0
for arg in "$@"; do
    case "$arg" in
        --force) force=1 ;;
        --stand-in) stand_in=1 ;;
        -h | --help) sed -n '2,16p' "$0"; exit 0 ;;
        *) echo "base_image.sh: unknown argument $arg" >&2; exit 2 ;;
    esac
done

if [[ -z "${DOCKER:-}" ]]; then
    if command -v podman >/dev/null; then DOCKER=podman; else DOCKER=docker; fi
fi
read -ra engine <<<"$DOCKER"  # the engine and its global flags, e.g. DOCKER="podman --runtime runc"
base=$(awk 'toupper($1) == "FROM" { print $2; exit }' Dockerfile)
[[ -n "$base" ]] || { echo "base_image.sh: no FROM line in Dockerfile" >&2; exit 1; }

if [[ $force == 0 ]] && "${engine[@]}" image inspect "$base" >/dev/null 2>&1; then
    echo "base image $base: present"
    exit 0
fi
if [[ $force == 0 && $stand_in == 0 ]] && timeout 120 "${engine[@]}" pull "$base" >/dev/null 2>&1; then
    echo "base image $base: pulled"
    exit 0
fi

command -v mmdebstrap >/dev/null || {
    echo "base_image.sh: $base cannot be pulled and mmdebstrap is missing (apt-get install mmdebstrap)" >&2
    exit 1
}
echo "base image $base: making a stand-in from Debian bookworm packages (mmdebstrap)"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# merged /usr set up by the hook (usr-is-merged) instead of the usrmerge package keeps perl out.
mmdebstrap --quiet --variant=minbase \
    --include=python3.11,python3-venv \
    --hook-dir=/usr/share/mmdebstrap/hooks/merged-usr \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --customize-hook='chroot "$1" python3.11 -m venv /opt/venv' \
    --customize-hook='printf "%s\n" "Dir::Cache::pkgcache \"\";" "Dir::Cache::srcpkgcache \"\";" >"$1"/etc/apt/apt.conf.d/docker-clean' \
    --customize-hook='rm -rf "$1"/opt/venv/lib/python3.11/site-packages/pip/_vendor/distlib/*.exe "$1"/var/cache/apt/*.bin' \
    bookworm "$work/base.tar" </dev/null
"${engine[@]}" import \
    --change 'ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    "$work/base.tar" "$base" >"$work/import.log" 2>&1 || { cat "$work/import.log" >&2; exit 1; }
echo "base image $base: stand-in imported ($("${engine[@]}" image inspect --format '{{.Size}}' "$base") bytes)"
