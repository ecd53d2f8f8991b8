#!/usr/bin/env bash
# Download the published checkpoints listed in models/checkpoints.tsv (the registry the Python loader reads).
#   bash download_models.sh [WEIGHTS_DIR] [NETWORK ... | all]
# WEIGHTS_DIR defaults to $AVDIARISE_WEIGHTS_DIR, else ~/.cache/av-diarise/weights. NETWORK is one of
# s3fd syncnet resnetse34 vggface2 ecapa wav2lip: every published file of those networks; `all`: every file;
# nothing: the files the default config uses (registry column `default`). Files with a published sha256
# are checked; a file is written under a temporary name and moved into place only when complete and verified.
# A file without a stable direct URL (column `default` is `manual`, e.g. Wav2Lip's lipsync_expert.pth) is not
# downloaded: the script says where to get it and where to put it, and exits non-zero while it is missing.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
registry="${AVDIARISE_REGISTRY:-$here/models/checkpoints.tsv}"  # override only for tests
dest="${1:-${AVDIARISE_WEIGHTS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/av-diarise/weights}}"
shift || true
wanted=" $* "

fetch() {  # fetch URL OUT
    if command -v curl >/dev/null 2>&1; then
        curl -fL --retry 3 --connect-timeout 30 -o "$2" "$1"
    elif command -v wget >/dev/null 2>&1; then
        wget -q -O "$2" "$1"
    else
        python3 -c 'import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], sys.argv[2])' "$1" "$2"
    fi
}

status=0
while IFS=$'\t' read -r network file sha256 default url; do
    [[ -z "$network" || "$network" == \#* ]] && continue
    if [[ "$wanted" == "  " ]]; then
        [[ "$default" == "1" ]] || continue
    elif [[ "$wanted" != *" all "* && "$wanted" != *" $network "* ]]; then
        continue
    fi
    out="$dest/$file"
    mkdir -p "$(dirname "$out")"
    if [[ -f "$out" && "$sha256" != "-" ]] && echo "$sha256  $out" | sha256sum -c --status; then
        echo "ok       $file"
        continue
    elif [[ -f "$out" && "$sha256" == "-" ]]; then
        echo "present  $file (no published sha256)"
        continue
    fi
    if [[ "$default" == "manual" ]]; then
        echo "error: $file has no direct download: get it from $url and save it as $out" >&2
        status=1; continue
    fi
    echo "fetching $file"
    tmp="$out.part"
    if ! fetch "$url" "$tmp"; then
        echo "error: could not download $file from $url" >&2
        rm -f "$tmp"; status=1; continue
    fi
    if [[ "$sha256" != "-" ]] && ! echo "$sha256  $tmp" | sha256sum -c --status; then
        echo "error: $file does not match its published sha256 (truncated or changed download); not kept" >&2
        rm -f "$tmp"; status=1; continue
    fi
    mv -f "$tmp" "$out"
done < "$registry"
echo "weights folder: $dest"
exit $status
