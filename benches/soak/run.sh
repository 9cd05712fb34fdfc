#!/bin/sh
# Load and soak runs of two real sidecars (see benches/soak/main.rs).
#
#   benches/soak/run.sh load [--connections 10000]
#   benches/soak/run.sh soak [--duration 10m] [--rate 100]
#
# 10,000 connections need ~20,000 descriptors in the harness (client + echo ends) and in
# each sidecar (peer + upstream ends), above the usual 20,000 soft limit: raise it here
# (root, or a hard limit >= 65536, is needed; otherwise the harness says so and fails).
set -eu
cd "$(dirname "$0")/../.."
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
exec cargo bench --bench soak -- "$@"
