#!/bin/sh
# Renders an Envoy config for one Azure OpenAI resource, then runs Envoy on it (exec: Envoy stays PID 1
# and gets SIGTERM). Used by deploy/compose.azure.yml and the Kubernetes sidecar (deploy/k8s/), so the
# shipped envoy/*.yaml stay the single source and only the host differs.
#
#   AZURE_HOST      the endpoint, as the Azure portal shows it (https://myres.openai.azure.com/) or just
#                   the host (myres.openai.azure.com, myres.cognitiveservices.azure.com)
#   AZURE_RESOURCE  or just the resource name: host = $AZURE_RESOURCE.openai.azure.com
#   ENVOY_LISTEN_ADDRESS  optional IPv4 address for the proxy listener (port 10000) instead of the
#                   template's 127.0.0.1, e.g. 0.0.0.0 when the proxy runs in another container. Only
#                   do that where nothing but the proxy can reach Envoy (see README, "Credentials").
#   ENVOY_TEMPLATE  config to render (default /etc/envoy/envoy.yaml), containing YOUR_RESOURCE.openai.azure.com
#   ENVOY_RENDERED  where to write it (default /tmp/envoy.yaml; a writable path under a read-only root)
# Extra arguments go to envoy.
set -eu

host="${AZURE_HOST:-}"
if [ -z "$host" ] && [ -n "${AZURE_RESOURCE:-}" ]; then
  case "$AZURE_RESOURCE" in
    *[!A-Za-z0-9-]*)
      echo "run-for-azure: AZURE_RESOURCE is the resource name only (e.g. myres); for an endpoint URL set AZURE_HOST=${AZURE_RESOURCE}" >&2
      exit 64
      ;;
  esac
  host="${AZURE_RESOURCE}.openai.azure.com"
fi
# The portal's form: https://myres.openai.azure.com/ (scheme, an optional :443, trailing slashes).
given="$host"
host="${host#https://}"
host="${host#HTTPS://}"
while [ "${host%/}" != "$host" ]; do host="${host%/}"; done
host="${host%:443}"
# A plain DNS name only: it is pasted into YAML and a sed expression. The placeholder itself (with its
# underscore) is refused too, so an unconfigured deployment fails here instead of at DNS.
case "$host" in
  "" | *[!A-Za-z0-9.-]* | .* | *. | *..*)
    echo "run-for-azure: set AZURE_HOST to your endpoint (e.g. https://myres.openai.azure.com/ or myres.openai.azure.com) or AZURE_RESOURCE to the resource name (e.g. myres); got '${given}'" >&2
    exit 64
    ;;
esac

listen="${ENVOY_LISTEN_ADDRESS:-}"
if [ -n "$listen" ]; then
  if ! printf '%s\n' "$listen" | grep -Eq '^([0-9]{1,3}\.){3}[0-9]{1,3}$'; then
    echo "run-for-azure: ENVOY_LISTEN_ADDRESS must be an IPv4 address such as 0.0.0.0 or 127.0.0.1; got '${listen}'" >&2
    exit 64
  fi
fi

template="${ENVOY_TEMPLATE:-/etc/envoy/envoy.yaml}"
rendered="${ENVOY_RENDERED:-/tmp/envoy.yaml}"
sed "s/YOUR_RESOURCE\.openai\.azure\.com/${host}/g" "$template" > "$rendered"
if grep -q 'YOUR_RESOURCE' "$rendered"; then
  echo "run-for-azure: placeholder left in $rendered" >&2
  exit 65
fi
if [ -n "$listen" ]; then
  proxy='address: { socket_address: { address: 127\.0\.0\.1, port_value: 10000 } }'
  if ! grep -q "$proxy" "$rendered"; then
    echo "run-for-azure: ENVOY_LISTEN_ADDRESS set, but $template has no listener on 127.0.0.1:10000 to move" >&2
    exit 65
  fi
  sed "s/${proxy}/address: { socket_address: { address: ${listen}, port_value: 10000 } }/" "$rendered" > "$rendered.tmp"
  mv "$rendered.tmp" "$rendered"
fi
echo "run-for-azure: upstream https://${host}, listening on ${listen:-the template's address} (config ${template})" >&2
exec envoy -c "$rendered" "$@"
