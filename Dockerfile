# azure-image-extproc: the Envoy ext_proc server. The same image also runs the Azure stand-in of the
# compose demo (entrypoint node dist/tools/azure-standin.js).
#
#   docker build -t azure-image-extproc:0.1.0 .
#   docker run --rm --stop-timeout 30 -p 50051:50051 azure-image-extproc:0.1.0
#
# --stop-timeout 30 (compose: stop_grace_period: 30s): on SIGTERM the server drains for drainDelayMs (5 s)
# and then waits up to shutdownDeadlineMs (20 s) for calls in flight; Docker's default of 10 s would kill
# it (exit 137) and drop those calls. Raise it if you raise either setting.
#
# No `# syntax=` line: BuildKit's built-in Dockerfile frontend builds this file, so a build needs no
# frontend image from Docker Hub.
#
# Node 24 (the current LTS): on Node >= 22.10 the server raises HTTP/2's reset limits on its Envoy-facing
# listener (docs/envoy-ext-proc.md, "Node and HTTP/2 stream resets"); on Node 20 only Envoy's
# max_requests_per_connection protects it.
ARG NODE_IMAGE=node:24-bookworm-slim

# ---- build: full install, compile TypeScript -------------------------------------------------------
FROM ${NODE_IMAGE} AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json tsconfig.tools.json ./
COPY src ./src
COPY proto ./proto
COPY tools ./tools
# The server (dist/), and the Azure stand-in the compose demo runs from this same image (dist/tools/, with
# the src/body modules it reads multipart bodies with in dist/src/).
RUN npm run build && npx tsc -p tsconfig.tools.json

# ---- prod-deps: runtime dependencies only, from the lockfile -------------------------------------
# A separate stage, so a source change does not reinstall them and no dev dependency can leak in.
FROM ${NODE_IMAGE} AS prod-deps
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --omit=dev --ignore-scripts --no-audit --no-fund && npm cache clean --force

# ---- runtime ---------------------------------------------------------------------------------------
FROM ${NODE_IMAGE} AS runtime
ENV NODE_ENV=production
WORKDIR /app
# Files stay owned by root: the server cannot modify its own code or dependencies.
COPY --from=prod-deps /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
# The server resolves ../proto from dist/ (src/proto.ts).
COPY --from=build /app/proto ./proto
COPY package.json ./
# The Unix-socket mode's directory (EXTPROC_LISTEN=unix:/var/run/extproc/extproc.sock), owned by the server's
# user: a fresh named volume mounted here takes this owner and mode, so the server can create its socket
# (a volume Docker creates for a path the image lacks is root's, and listen() fails with EACCES).
RUN mkdir -p /var/run/extproc && chown 1000:1000 /var/run/extproc
# The image's `node` user, by number so Kubernetes' runAsNonRoot can verify it without /etc/passwd.
USER 1000:1000
# ext_proc + grpc.health.v1 (EXTPROC_LISTEN). Optional: 50052 health-only (EXTPROC_HEALTH_LISTEN),
# 50053 HTTP admin/metrics (EXTPROC_ADMIN_LISTEN).
EXPOSE 50051
# The same gRPC health check Envoy's cluster health check and the kubelet use; no curl or probe binary.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 CMD ["node", "dist/healthcheck.js"]
# node directly, no npm: npm would sit between the runtime and node and swallow SIGTERM. As PID 1, node
# gets no default signal handlers from the kernel, but the server installs its own for SIGTERM/SIGINT
# (health NOT_SERVING, drain, exit), and it starts no child processes, so an init like tini has
# nothing to reap. `docker run --init` remains available if you add any.
# --max-semi-space-size=2 (MiB), as in `npm start`: most garbage here is 64 KiB body buffers outside the
# JS heap, freed when a scavenge collects their wrappers; a small young generation scavenges often enough
# to keep a 100 MiB streamed edit within ~26 MiB of RSS growth (BENCHMARKS.md), and keeps Node 24 from
# reserving ~130 MiB more heap under load.
ENTRYPOINT ["node", "--max-semi-space-size=2", "dist/main.js"]
