#!/usr/bin/env bash
# The wheels of scripts/gpu_wheels.txt, for a GPU machine without network (docs/gpu-check.md).
#
# Here (with network):
#   scripts/gpu_wheels.sh download           .whl/: the base tier (bitsandbytes, torchao, rouge-score, ...), checked
#   scripts/gpu_wheels.sh download --vllm    .whl-vllm/1, 2, ...: the vLLM tier in bundles under BUNDLE_MIB (default
#                                            60) MiB each, one per device call; vLLM's own wheel split into parts
#   scripts/gpu_wheels.sh sizes              what each device call would carry
# There:
#   scripts/gpu_wheels.sh check DIR          a carried bundle's parts against its SHA256SUMS (the calls before the last)
#   scripts/gpu_wheels.sh install [--vllm]   reassemble, check every sha256 against the list, install into /tmp/site
#                                            (--no-index --no-deps --target); prints /tmp/site for PYTHONPATH
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
LIST=scripts/gpu_wheels.txt
SITE=${SITE:-/tmp/site}
BUNDLE_MIB=${BUNDLE_MIB:-60}
PLATFORMS=(--python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
  --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
  --platform manylinux1_x86_64 --platform manylinux_2_31_x86_64 --platform manylinux_2_34_x86_64
  --platform manylinux_2_35_x86_64)

say() { echo "gpu_wheels: $*" >&2; }

# tier requirement sha256 file, one line each, comments and blank lines left out
entries() { awk -v tier="$1" '$1 == tier && NF == 4 { print $2, $3, $4 }' "$LIST"; }

checked() {  # FILE SHA256: whether the file is there and has that sha256
  [[ -f $1 ]] && [[ $(sha256sum "$1" | cut -d' ' -f1) == "$2" ]]
}

download() {
  local tier=base dest=.whl
  if [[ ${1:-} == --vllm ]]; then tier=vllm dest=.whl-vllm/all; fi
  mkdir -p "$dest"
  local tmp
  tmp=$(mktemp -d)
  while read -r req sha file; do
    if checked "$tmp/$file" "$sha" || checked "$dest/$file" "$sha"; then continue; fi
    if [[ $file == *.tar.gz ]]; then
      "$PYTHON" -m pip download -q --no-deps --no-binary=:all: -d "$tmp" "$req"
    else
      "$PYTHON" -m pip download -q --no-deps --only-binary=:all: "${PLATFORMS[@]}" -d "$tmp" "$req"
    fi
    if ! checked "$tmp/$file" "$sha"; then
      say "$req: $file missing or its sha256 is not $sha"
      exit 1
    fi
    if [[ $file == *.tar.gz ]]; then  # a source package: built into a pure wheel here
      "$PYTHON" -m pip wheel -q --no-deps -w "$dest" "$tmp/$file"
    else
      mv "$tmp/$file" "$dest/"
    fi
  done < <(entries "$tier")
  rm -rf "$tmp"
  if [[ $tier == vllm ]]; then bundle; fi
  sizes
}

bundle() {
  # .whl-vllm/all -> .whl-vllm/1, 2, ...: each under BUNDLE_MIB MiB, large wheels split into parts. Each bundle has its
  # SHA256SUMS; the list's sha256 checks the reassembled wheels there.
  local limit=$((BUNDLE_MIB << 20)) n=1 used=0 file size
  find .whl-vllm -mindepth 1 -maxdepth 1 -name '[0-9]*' -exec rm -rf {} +
  mkdir -p .whl-vllm/parts
  for file in .whl-vllm/all/*.whl; do
    size=$(stat -c %s "$file")
    if ((size > limit)); then
      split -b "$limit" -d -a 2 "$file" ".whl-vllm/parts/$(basename "$file").part-"
    else
      ln -f "$file" .whl-vllm/parts/
    fi
  done
  while read -r size file; do
    if ((used + size > limit)); then n=$((n + 1)) used=0; fi
    mkdir -p ".whl-vllm/$n"
    mv "$file" ".whl-vllm/$n/"
    used=$((used + size))
  done < <(find .whl-vllm/parts -type f -printf '%s %p\n' | sort -rn)
  rmdir .whl-vllm/parts
  for dir in .whl-vllm/[0-9]*; do (cd "$dir" && sha256sum -- * >SHA256SUMS); done
}

sizes() {
  local tree
  tree=$(git ls-files -z | du -bc --files0-from=- | tail -1 | cut -f1)
  say "the working tree: $((tree >> 10)) KiB"
  [[ -d .whl ]] && say ".whl: $(($(du -bs .whl | cut -f1) >> 20)) MiB ($(ls .whl | wc -l) wheels)"
  for dir in .whl-vllm/[0-9]*; do
    [[ -d $dir ]] && say "$dir: $(($(du -bs "$dir" | cut -f1) >> 20)) MiB ($(ls "$dir" | wc -l) files)"
  done
  return 0
}

check_bundle() {
  (cd "$1" && sha256sum --quiet -c SHA256SUMS) && say "$1: every part checked"
}

install() {
  local tier=base dir
  local wheels=()
  if compgen -G ".whl/*.whl" >/dev/null; then wheels+=(.whl/*.whl); fi
  if [[ ${1:-} == --vllm ]]; then
    tier=vllm
    local assembled=/tmp/wheels-vllm
    mkdir -p "$assembled"
    for dir in .whl-vllm/[0-9]*; do check_bundle "$dir" >&2; done
    while read -r req sha file; do
      if ! checked "$assembled/$file" "$sha"; then
        if compgen -G ".whl-vllm/[0-9]*/$file" >/dev/null; then
          cp .whl-vllm/[0-9]*/"$file" "$assembled/$file"
        else
          # the parts in the order of their suffix, whichever bundle each came in
          find .whl-vllm -path "*/$file.part-*" -printf '%f %p\n' | sort | cut -d' ' -f2 | xargs -r cat >"$assembled/$file"
        fi
      fi
      if ! checked "$assembled/$file" "$sha"; then
        say "$req: $file is incomplete or its sha256 is not $sha (were all of .whl-vllm/1, 2, ... carried?)"
        exit 1
      fi
      wheels+=("$assembled/$file")
    done < <(entries vllm)
  fi
  if ((${#wheels[@]} == 0)); then
    say "no wheels carried (.whl/ is empty)"
    exit 1
  fi
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "${wheels[@]}" >&2
  say "installed ${#wheels[@]} wheels ($tier tier) into $SITE"
  echo "$SITE"
}

case ${1:-} in
  download) download "${2:-}" ;;
  install) install "${2:-}" ;;
  check) check_bundle "$2" ;;
  sizes) sizes ;;
  *)
    say "usage: scripts/gpu_wheels.sh download [--vllm] | install [--vllm] | check DIR | sizes"
    exit 2
    ;;
esac
