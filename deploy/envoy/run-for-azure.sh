#!/bin/sh
# Renders an Envoy config for one Azure OpenAI resource, then runs Envoy on it (exec: Envoy stays PID 1
# and gets SIGTERM). Used by deploy/compose.azure.yml and the Kubernetes sidecar (deploy/k8s/), so the
# shipped envoy/*.yaml stay the single source and only the host differs.
#
#   AZURE_HOST      the endpoint host, e.g. myres.openai.azure.com or myres.cognitiveservices.azure.com
#   AZURE_RESOURCE  or just the resource name: host = $AZURE_RESOURCE.openai.azure.com
#   ENVOY_TEMPLATE  config to render (default /etc/envoy/envoy.yaml), containing YOUR_RESOURCE.openai.azure.com
#   ENVOY_RENDERED  where to write it (default /tmp/envoy.yaml; a writable path under a read-only root)
# Extra arguments go to envoy.
set -eu

host="${AZURE_HOST:-}"
if [ -z "$host" ] && [ -n "${AZURE_RESOURCE:-}" ]; then
  host="${AZURE_RESOURCE}.openai.azure.com"
fi
# A plain DNS name only: it is pasted into YAML and a sed expression. The placeholder itself (with its
# underscore) is refused too, so an unconfigured deployment fails here instead of at DNS.
case "$host" in
  "" | *[!A-Za-z0-9.-]* | .* | *. | *..*)
    echo "run-for-azure: set AZURE_HOST (e.g. myres.openai.azure.com) or AZURE_RESOURCE (e.g. myres); got '${host}'" >&2
    exit 64
    ;;
esac

template="${ENVOY_TEMPLATE:-/etc/envoy/envoy.yaml}"
rendered="${ENVOY_RENDERED:-/tmp/envoy.yaml}"
sed "s/YOUR_RESOURCE\.openai\.azure\.com/${host}/g" "$template" > "$rendered"
if grep -q 'YOUR_RESOURCE' "$rendered"; then
  echo "run-for-azure: placeholder left in $rendered" >&2
  exit 65
fi
echo "run-for-azure: upstream https://${host} (config ${template})" >&2
exec envoy -c "$rendered" "$@"
