#!/usr/bin/env bash
# Adds every public symbol the PublicApiAnalyzers report as undeclared (RS0016) to PublicAPI.Unshipped.txt.
# Run it after adding public API on purpose; review the diff of the .txt file like any other change.
set -euo pipefail
cd "$(dirname "$0")/.."
dotnet format analyzers Scheduler/Scheduler.csproj --diagnostics RS0016 RS0017 --severity info "$@"
