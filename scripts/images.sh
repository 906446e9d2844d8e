#!/usr/bin/env bash
# Builds the operator and CPU sidecar images and runs them, with no Docker
# daemon (CI runs it after the tests).
#
# Usage: scripts/images.sh [--profile release|debug] [--no-build] [--cuda] [--help]
#
#   --profile P  cargo profile whose binaries go into the images (default
#                release). Also read from CODED_IMAGE_PROFILE.
#   --no-build   take the binaries already in target/<profile> instead of
#                running cargo build (CI: `cargo test --workspace` has just
#                built them, and a `cargo build` resolves dev-dependency
#                features differently and would rebuild half the workspace).
#   --cuda       also the CUDA sidecar image, localhost/coded-sidecar:dev-cuda,
#                from deploy/Dockerfile.sidecar-cuda and what
#                scripts/cuda-build.sh leaves in target/<profile>-cuda (built
#                by it here unless --no-build). Also CODED_IMAGE_CUDA=1.
#
# What it does, as root on a Debian machine:
#   1. installs debootstrap, podman and buildah with apt if they are missing;
#   2. makes a Debian bookworm base with `debootstrap --variant=minbase` from
#      the mirror apt already uses, cached as a tarball under
#      ~/.cache/coded-serving/images (CODED_IMAGES_CACHE), one per suite and
#      architecture, and `podman import`s it under the tag the Dockerfiles'
#      FROM names (docker.io/library/debian:bookworm-slim);
#   3. builds the binaries with cargo on the host, strips their debug info
#      into a staging context, and builds localhost/coded-operator:dev and
#      localhost/coded-sidecar:dev from deploy/Dockerfile.operator and
#      deploy/Dockerfile.sidecar with `buildah bud --pull=never
#      --isolation chroot`;
#   4. runs each image's entrypoint with `buildah run --isolation chroot`
#      (host network): `--help` of both, `crdgen` prints the CRD, and the
#      sidecar serves a v2 inference request on loopback for a tiny MLP
#      trained on the host (Fashion-MNIST from Debian's dataset-fashion-mnist).
#
#   5. with --cuda, runs the CUDA image with no GPU: every library it links
#      is in it but the driver (which the NVIDIA runtime mounts on a GPU
#      node); with cuda-build.sh's stub driver mounted as the node's, it
#      prints --help, and `worker --device cuda` fails at start with the
#      sidecar's one-line error.
#
# `podman run` does not work here (no CAP_SYS_RESOURCE for its rlimits);
# buildah's chroot isolation does. Containers and the worker it starts are
# removed on exit, failure included; the images and the base stay.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; }
die() { echo "images.sh: $*" >&2; exit 1; }

profile=${CODED_IMAGE_PROFILE:-release}
build=1
cuda=${CODED_IMAGE_CUDA:-}
while [ $# -gt 0 ]; do
  case $1 in
    --no-build) build=; shift ;;
    --cuda) cuda=1; shift ;;
    --profile) [ $# -ge 2 ] || die "--profile needs release or debug"; profile=$2; shift 2 ;;
    --profile=*) profile=${1#*=}; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
  esac
done
case $profile in
  release) cargo_profile=(--release) ;;
  debug) cargo_profile=() ;;
  *) die "--profile must be release or debug, not '$profile'" ;;
esac

suite=bookworm
base_tag=docker.io/library/debian:$suite-slim
tag=${CODED_IMAGE_TAG:-dev}
operator_image=localhost/coded-operator:$tag
sidecar_image=localhost/coded-sidecar:$tag
cuda_image=localhost/coded-sidecar:$tag-cuda
cache=${CODED_IMAGES_CACHE:-$HOME/.cache/coded-serving/images}

# The Dockerfiles must still name the base this script imports.
for f in deploy/Dockerfile.operator deploy/Dockerfile.sidecar deploy/Dockerfile.sidecar-cuda; do
  grep -q "^ARG BASE=$base_tag\$" "$f" || die "$f no longer names $base_tag as its base"
done

t0=$(date +%s)
timings=()
lap_start=$t0
lap() { # lap NAME: records the seconds since the previous lap
  local now; now=$(date +%s)
  timings+=("$1 $((now - lap_start)) s")
  lap_start=$now
}

work=$(mktemp -d "${TMPDIR:-/tmp}/coded-images.XXXXXX")
containers=()
worker_pid=
passed=0
cleanup() {
  local rc=$?
  if [ -n "$worker_pid" ]; then
    # buildah run was started in its own process group: end the group.
    kill -TERM -- "-$worker_pid" 2>/dev/null || true
    wait "$worker_pid" 2>/dev/null || true
  fi
  for c in "${containers[@]}"; do buildah rm "$c" >/dev/null 2>&1 || true; done
  rm -rf "$work"
  echo "--- images: timings"
  for t in "${timings[@]}"; do echo "  $t"; done
  echo "  total $(( $(date +%s) - t0 )) s"
  if [ "$rc" -eq 0 ]; then
    echo "images: $passed passed, 0 failed"
  else
    echo "images: $passed passed, 1 failed"
    echo "images.sh: failed (exit $rc)" >&2
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "--- tools"
[ "$(id -u)" -eq 0 ] || die "run as root: debootstrap and buildah's chroot isolation need it"
missing=()
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v podman >/dev/null || missing+=(podman)
command -v buildah >/dev/null || missing+=(buildah)
command -v strip >/dev/null || missing+=(binutils)
command -v curl >/dev/null || missing+=(curl)
[ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] || missing+=(dataset-fashion-mnist)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
command -v python3 >/dev/null || die "python3 is needed to check the inference response"
lap tools

echo "--- base image $base_tag"
# apt_mirror SUITE: the mirror apt already uses for SUITE's main component
# (empty before the first apt-get update). The $(...) are apt's fields.
apt_mirror() {
  # shellcheck disable=SC2016
  apt-get indextargets --format '$(REPO_URI) $(RELEASE) $(COMPONENT)' 'Identifier: Packages' \
    | awk -v s="$1" '$2 == s && $3 == "main" { print $1; exit }'
}
arch=$(dpkg --print-architecture)
tarball=$cache/debian-$suite-minbase-$arch.tar
if [ ! -f "$tarball" ]; then
  mirror=$(apt_mirror "$suite")
  if [ -z "$mirror" ]; then apt-get update -qq; mirror=$(apt_mirror "$suite"); fi
  [ -n "$mirror" ] || die "apt has no '$suite main' source to debootstrap from (see /etc/apt/sources.list*)"
  echo "debootstrap --variant=minbase $suite from $mirror (cold: about a minute)"
  root=$work/rootfs
  debootstrap --variant=minbase --arch="$arch" "$suite" "$root" "$mirror" > "$work/debootstrap.log" 2>&1 \
    || { tail -n 30 "$work/debootstrap.log" >&2; die "debootstrap failed (log above)"; }
  # As the slim image: no package cache or lists (RUN apt-get update fetches
  # them), none of the host's names (the runtime mounts its own), and the
  # suite's updates and security sources beside main, when apt has them.
  rm -rf "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  rm -rf "$root"/var/log/* "$root"/tmp/* "$root"/var/tmp/*
  rm -f "$root"/etc/resolv.conf "$root"/etc/hostname
  for s in "$suite-updates" "$suite-security"; do
    m=$(apt_mirror "$s")
    if [ -n "$m" ]; then echo "deb $m $s main" >> "$root/etc/apt/sources.list"; fi
  done
  mkdir -p "$cache"
  tar --numeric-owner --xattrs -C "$root" -cf "$tarball.tmp" .
  mv "$tarball.tmp" "$tarball"
  rm -rf "$root"
  echo "cached $tarball ($(du -h "$tarball" | cut -f1))"
else
  echo "cached: $tarball"
fi
# Import only when the tag is missing or was made from another tarball.
key=$(sha256sum "$tarball" | cut -c1-16)
have=$(podman image inspect --format '{{index .Labels "org.coded-serving.base"}}' "$base_tag" 2>/dev/null || true)
if [ "$have" != "$key" ]; then
  old=$(podman image inspect --format '{{.Id}}' "$base_tag" 2>/dev/null || true)
  podman import --quiet --change "LABEL org.coded-serving.base=$key" --change 'CMD ["bash"]' \
    "$tarball" "$base_tag" >/dev/null || die "podman import of $tarball failed"
  # The previous base, if no image of ours still stands on it.
  if [ -n "$old" ]; then podman rmi "$old" >/dev/null 2>&1 || true; fi
  echo "imported as $base_tag"
else
  echo "already imported as $base_tag"
fi
lap base

if [ -n "$build" ]; then
  echo "--- cargo build (${profile})"
  nice -n 10 cargo build --locked --quiet "${cargo_profile[@]}" -p coded-operator -p coded-sidecar --bins
else
  echo "--- binaries already built (target/${profile})"
  for bin in coded-operator crdgen coded-sidecar; do
    [ -x "target/$profile/$bin" ] || die "target/$profile/$bin is missing: build it, or drop --no-build"
  done
fi
# A context with only the binaries, at the paths the Dockerfiles COPY, their
# debug info stripped (the debug ones are ~300 MB each with it, ~30 MB without).
context=$work/context
mkdir -p "$context/target/$profile"
for bin in coded-operator crdgen coded-sidecar; do
  strip --strip-debug -o "$context/target/$profile/$bin" "target/$profile/$bin"
done
cuda_dir=target/$profile-cuda
if [ -n "$cuda" ]; then
  if [ -n "$build" ]; then
    echo "--- scripts/cuda-build.sh (${profile})"
    flags=(--no-clippy)
    [ "$profile" = debug ] || flags+=(--release)
    nice -n 10 scripts/cuda-build.sh "${flags[@]}"
  fi
  [ -x "$cuda_dir/coded-sidecar" ] && [ -d "$cuda_dir/lib" ] && [ -f "$cuda_dir/stub/libcuda.so.1" ] ||
    die "$cuda_dir has no CUDA build: run scripts/cuda-build.sh$([ "$profile" = debug ] || echo ' --release'), or drop --no-build"
  mkdir -p "$context/$cuda_dir"
  strip --strip-debug -o "$context/$cuda_dir/coded-sidecar" "$cuda_dir/coded-sidecar"
  # The wheels' libraries (~1 GB), hard-linked where the file system allows.
  cp -rl "$cuda_dir/lib" "$context/$cuda_dir/lib" 2>/dev/null || cp -r "$cuda_dir/lib" "$context/$cuda_dir/lib"
fi
lap "binaries + strip"

# bud DOCKERFILE IMAGE: builds IMAGE from the staging context, then removes
# the image that IMAGE named before (else each run leaves one behind).
bud() {
  local old new
  old=$(buildah images --quiet --noheading "$2" 2>/dev/null || true)
  echo "--- buildah bud -f $1 -t $2"
  buildah bud --quiet --pull=never --isolation chroot --layers=false \
    --build-arg "PROFILE=$profile" -f "$1" -t "$2" "$context" >/dev/null \
    || die "buildah bud -f $1 failed (output above)"
  new=$(buildah images --quiet --noheading "$2")
  if [ -n "$old" ] && [ "$old" != "$new" ]; then buildah rmi "$old" >/dev/null 2>&1 || true; fi
}
bud deploy/Dockerfile.operator "$operator_image"
lap "bud operator"
bud deploy/Dockerfile.sidecar "$sidecar_image"
lap "bud sidecar"
images=("$operator_image" "$sidecar_image")
if [ -n "$cuda" ]; then
  bud deploy/Dockerfile.sidecar-cuda "$cuda_image"
  lap "bud sidecar-cuda"
  images+=("$cuda_image")
fi
for image in "${images[@]}"; do buildah images --noheading "$image"; done

# new_container NAME IMAGE: a working container for `buildah run`, removed on exit.
new_container() {
  containers+=("$1")
  buildah from --pull=never --quiet --name "$1" "$2" >/dev/null
}
# entrypoint CONTAINER: the image's ENTRYPOINT, one word per line.
entrypoint() {
  buildah inspect --format '{{range .OCIv1.Config.Entrypoint}}{{println .}}{{end}}' "$1"
}

echo "--- run $operator_image"
op=coded-images-operator-$$
new_container "$op" "$operator_image"
mapfile -t op_entry < <(entrypoint "$op")
[ ${#op_entry[@]} -gt 0 ] || die "$operator_image has no ENTRYPOINT"
buildah run --isolation chroot "$op" -- "${op_entry[@]}" --help > "$work/op-help.txt" \
  || die "'${op_entry[*]} --help' failed in $operator_image"
grep -q '^Usage: coded-operator' "$work/op-help.txt" || die "unexpected coded-operator --help: $(head -3 "$work/op-help.txt")"
echo "coded-operator --help: ok (runs as $(buildah run --isolation chroot "$op" -- id -u))"
passed=$((passed + 1))
buildah run --isolation chroot "$op" -- /usr/local/bin/crdgen > "$work/crd.yaml" \
  || die "crdgen failed in $operator_image"
{ grep -q '^kind: CustomResourceDefinition' "$work/crd.yaml" \
  && grep -q 'name: codedinferenceservices' "$work/crd.yaml"; } \
  || die "crdgen printed no CodedInferenceService CRD: $(head -5 "$work/crd.yaml")"
echo "crdgen: ok ($(wc -l < "$work/crd.yaml") lines of CRD)"
passed=$((passed + 1))
lap "run operator"

echo "--- run $sidecar_image"
sc=coded-images-sidecar-$$
new_container "$sc" "$sidecar_image"
mapfile -t sc_entry < <(entrypoint "$sc")
[ ${#sc_entry[@]} -gt 0 ] || die "$sidecar_image has no ENTRYPOINT"
buildah run --isolation chroot "$sc" -- "${sc_entry[@]}" --help > "$work/sc-help.txt" \
  || die "'${sc_entry[*]} --help' failed in $sidecar_image"
grep -q '^Usage: coded-sidecar' "$work/sc-help.txt" || die "unexpected coded-sidecar --help: $(head -3 "$work/sc-help.txt")"
echo "coded-sidecar --help: ok"
passed=$((passed + 1))

# A tiny model trained on the host, mounted read-only: the image runs as
# 65532, so the model's folder must be world-readable.
CODED_THREADS=1 "target/$profile/coded-sidecar" train base --arch mlp --epochs 1 --limit 2000 --quiet \
  --out "$work/model" >/dev/null
chmod 755 "$work" "$work/model" && chmod 644 "$work/model"/*
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
# Own process group, so that cleanup ends buildah and the worker inside together.
setsid buildah run --isolation chroot --volume "$work/model:/models/fashion-mlp:ro" "$sc" -- \
  "${sc_entry[@]}" worker --model /models/fashion-mlp --host 127.0.0.1 --port "$port" --grpc-port 0 \
  > "$work/worker.log" 2>&1 &
worker_pid=$!
ready=
for _ in $(seq 150); do
  if curl -fsS "http://127.0.0.1:$port/v2/health/ready" >/dev/null 2>&1; then ready=1; break; fi
  kill -0 "$worker_pid" 2>/dev/null || break
  sleep 0.2
done
[ -n "$ready" ] || { cat "$work/worker.log" >&2; die "the sidecar in $sidecar_image did not become ready on port $port (log above)"; }
pixels=$(python3 -c 'print(",".join(["0.5"] * 784))')
curl -fsS -X POST "http://127.0.0.1:$port/v2/models/fashion-mlp/infer" \
  -H 'content-type: application/json' \
  -d "{\"inputs\":[{\"name\":\"input\",\"shape\":[1,1,28,28],\"datatype\":\"FP32\",\"data\":[$pixels]}]}" \
  > "$work/infer.json" || { cat "$work/worker.log" >&2; die "v2 infer request to the sidecar in $sidecar_image failed"; }
python3 - "$work/infer.json" <<'EOF' || die "unexpected v2 infer response: $(head -c 500 "$work/infer.json")"
import json, sys
r = json.load(open(sys.argv[1]))
out = r["outputs"][0]
assert out["shape"] == [1, 10] and len(out["data"]) == 10, out
print(f"v2 infer: ok, {len(out['data'])} outputs from {r.get('model_name')}")
EOF
passed=$((passed + 1))
kill -TERM -- "-$worker_pid"
wait "$worker_pid" 2>/dev/null || true
worker_pid=
lap "run sidecar"


if [ -n "$cuda" ]; then
  echo "--- run $cuda_image (no GPU here)"
  cc=coded-images-sidecar-cuda-$$
  new_container "$cc" "$cuda_image"
  mapfile -t cc_entry < <(entrypoint "$cc")
  [ ${#cc_entry[@]} -gt 0 ] || die "$cuda_image has no ENTRYPOINT"
  # Everything the binary links is in the image but the driver.
  missing_libs=$(buildah run --isolation chroot "$cc" -- ldd "${cc_entry[0]}" | awk '/not found/ { print $1 }' | tr '\n' ' ')
  [ "$missing_libs" = "libcuda.so.1 " ] ||
    die "$cuda_image should lack only the driver (libcuda.so.1), lacks: ${missing_libs:-nothing}"
  echo "libraries: all in the image but the driver, libcuda.so.1"
  passed=$((passed + 1))
  # The stub driver where a device plugin would mount the node's.
  stub=(--volume "$PWD/$cuda_dir/stub:/usr/local/nvidia/lib64:ro")
  buildah run --isolation chroot "${stub[@]}" "$cc" -- "${cc_entry[@]}" --help > "$work/cuda-help.txt" \
    || die "'${cc_entry[*]} --help' failed in $cuda_image"
  grep -q '^Usage: coded-sidecar' "$work/cuda-help.txt" || die "unexpected --help in $cuda_image: $(head -3 "$work/cuda-help.txt")"
  echo "coded-sidecar --help: ok"
  passed=$((passed + 1))
  # The sidecar's stderr to stdout inside the container, buildah's own
  # messages (its exit status) aside.
  if out=$(buildah run --isolation chroot "${stub[@]}" "$cc" -- sh -c 'exec "$@" 2>&1' sh \
    "${cc_entry[@]}" worker --model /nonexistent --device cuda 2>/dev/null); then
    die "--device cuda started in $cuda_image with a stub driver"
  fi
  case $out in
    "error: --device cuda:0 cannot be opened (no usable NVIDIA GPU or driver?)"*) ;;
    *) die "expected the sidecar's one-line device error in $cuda_image, got: $out" ;;
  esac
  [ "$(printf '%s\n' "$out" | grep -c .)" = 1 ] || die "the device error in $cuda_image is not one line: $out"
  echo "--device cuda with no GPU: $out"
  passed=$((passed + 1))
  lap "run sidecar-cuda"
fi
