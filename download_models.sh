#!/usr/bin/env bash
# Download the published checkpoints listed in models/checkpoints.tsv (the registry the Python loader reads).
#   bash download_models.sh [WEIGHTS_DIR] [NETWORK ... | all]
# WEIGHTS_DIR defaults to $AVDIARISE_WEIGHTS_DIR, else ~/.cache/av-diarise/weights. NETWORK is one of
# s3fd syncnet resnetse34 vggface2 ecapa resemblyzer wav2lip gestsync: every published file of those networks; `all`: every file;
# nothing: the files the default config uses (registry column `default`). Files with a published sha256
# are checked; a file is written under a temporary name and moved into place only when complete and verified.
# A file without a stable direct URL (column `default` is `manual`, e.g. Wav2Lip's lipsync_expert.pth) is not
# downloaded: the script says where to get it and where to put it, and exits non-zero while it is missing.
# A url of the form ARCHIVE#MEMBER (not manual; resemblyzer: Resemblyzer's pretrained.pt inside its PyPI wheel) downloads the
# zip/wheel, extracts MEMBER and checks the member's sha256; the archive itself is not kept.
# When a file could not be put in place (offline, no direct URL, bad download), a final line on stderr says
# which folder it belongs in and how to point the scripts at a folder that already holds the files.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
registry="${AVDIARISE_REGISTRY:-$here/models/checkpoints.tsv}"  # override only for tests
dest="${1:-${AVDIARISE_WEIGHTS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/av-diarise/weights}}"
shift || true
wanted=" $* "

fetch() {  # fetch URL OUT: no progress meter and no retry chatter; on failure the reason on stdout, one line
    local reason rc=0
    if command -v curl >/dev/null 2>&1; then
        # -s: no meter, no "Will retry" warnings; -S: still the final error; transient errors retried twice
        reason="$(curl -fsSL --retry 2 --connect-timeout 20 -o "$2" "$1" 2>&1)" || rc=$?
    elif command -v wget >/dev/null 2>&1; then
        reason="$(wget -q --tries=3 --timeout=20 -O "$2" "$1" 2>&1)" || rc=$?
        [[ -n "$reason" || $rc -eq 0 ]] || reason="wget exit status $rc"
    else
        reason="$(python3 -c 'import sys, urllib.request
try:
    urllib.request.urlretrieve(sys.argv[1], sys.argv[2])
except Exception as err:
    sys.exit(f"{type(err).__name__}: {err}")' "$1" "$2" 2>&1)" || rc=$?
    fi
    if [[ $rc -ne 0 ]]; then
        reason="${reason%$'\n'}"; reason="${reason##*$'\n'}"  # the last line: curl -S repeats it per try
        echo "${reason:-exit status $rc}"
    fi
    return $rc
}

status=0
missing=0
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
        status=1; missing=$((missing + 1)); continue
    fi
    echo "fetching $file"
    tmp="$out.part"
    member=""
    if [[ "$url" == *"#"* ]]; then member="${url#*#}"; url="${url%%#*}"; fi
    if ! reason="$(fetch "$url" "$tmp")"; then
        echo "error: could not download $file from $url (${reason}); check the network and re-run" >&2
        rm -f "$tmp"; status=1; missing=$((missing + 1)); continue
    fi
    if [[ -n "$member" ]] && ! reason="$(python3 - "$tmp" "$member" "$tmp.member" 2>&1 <<'PY'
import shutil, sys, zipfile
try:
    with zipfile.ZipFile(sys.argv[1]) as archive, archive.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
        shutil.copyfileobj(src, dst)
except (OSError, KeyError, zipfile.BadZipFile) as err:
    sys.exit(f"{type(err).__name__}: {err}")
PY
)"; then
        echo "error: could not extract $member from $url (${reason##*$'\n'}); not kept" >&2
        rm -f "$tmp" "$tmp.member"; status=1; missing=$((missing + 1)); continue
    fi
    [[ -z "$member" ]] || mv -f "$tmp.member" "$tmp"
    if [[ "$sha256" != "-" ]] && ! echo "$sha256  $tmp" | sha256sum -c --status; then
        echo "error: $file does not match its published sha256 (truncated or changed download); not kept" >&2
        rm -f "$tmp"; status=1; missing=$((missing + 1)); continue
    fi
    mv -f "$tmp" "$out"
done < "$registry"
echo "weights folder: $dest"
if [[ $status -ne 0 ]]; then
    echo "error: $missing file(s) missing from $dest (the folder this script fills); copy them there from a machine" \
         "with network access, or point the scripts at a folder that holds them: --weights_dir DIR or" \
         "AVDIARISE_WEIGHTS_DIR=DIR; then re-run this script to check them" >&2
fi
exit $status
