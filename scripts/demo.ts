// `npm run demo`: the bug and the fix, side by side, without Docker or Envoy. Starts this server, a local
// stand-in for Azure OpenAI (tools/azure-standin.ts) and a small HTTP data path that plays Envoy through
// the Envoy emulation of the test suite (test/envoy/), then sends the request of LiteLLM issue #26316
// once straight to "Azure" and once through the filter.
import pino from 'pino';
import { startAzureStandin } from '../tools/azure-standin.js';
import { buildConfig } from '../src/config.js';
import { startServer } from '../src/server.js';
import { startDataPath } from '../test/envoy/data-path.js';
import { EnvoyEmulator } from '../test/envoy/emulator.js';

const DEPLOYMENT = 'gpt-image-2-1';
const PATH = `/openai/deployments/${DEPLOYMENT}/images/generations?api-version=2025-04-01-preview`;
const SEED = JSON.stringify({ model: DEPLOYMENT, prompt: 'a red circle', n: 1, size: '1024x1024' });

async function send(base: string): Promise<{ status: number; body: string }> {
  const response = await fetch(base + PATH, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'api-key': 'demo-azure-key' },
    body: SEED,
  });
  return { status: response.status, body: await response.text() };
}

function shorten(body: string): string {
  return body.replace(/"b64_json":"([A-Za-z0-9+/=]{12})[A-Za-z0-9+/=]*"/, '"b64_json":"$1…"').replace(/,"usage":\{.*\}\}$/, ',…}');
}

async function main(): Promise<void> {
  const azure = await startAzureStandin({ port: 0, host: '127.0.0.1', deployments: [DEPLOYMENT], log: () => {} });
  const config = buildConfig({ listen: '127.0.0.1:0' });
  const server = await startServer({ config: () => config, logger: pino({ level: 'warn' }) });
  // The recommended Envoy set-up (README, "An Envoy you already run").
  const envoy = new EnvoyEmulator({
    target: server.addresses.listen,
    processingMode: { requestHeaderMode: 'SEND', responseHeaderMode: 'SKIP', requestBodyMode: 'NONE', responseBodyMode: 'NONE' },
    allowModeOverride: true,
    messageTimeoutMs: 2000,
    maxRequestsPerConnection: 900,
  });
  const dataPath = await startDataPath({ emulator: envoy, upstream: azure.url });
  try {
    const direct = await send(azure.url);
    const seenDirect = azure.requests.at(-1)?.body.toString() ?? '';
    const filtered = await send(dataPath.url);
    const seenFiltered = azure.requests.at(-1)?.body.toString() ?? '';
    const rows: Array<[string, string, string]> = [
      ['', 'straight to Azure (stand-in)', 'through Envoy + azure-image-extproc'],
      ['request', `POST ${PATH.split('?')[0]}`, 'same'],
      ['body sent', SEED, 'same'],
      ['Azure got', seenDirect, seenFiltered],
      ['status', String(direct.status), String(filtered.status)],
      ['answer', shorten(direct.body), shorten(filtered.body)],
    ];
    const width = Math.max(...rows.map(([, left]) => left.length), 30);
    for (const [label, left, right] of rows) {
      console.log(`${label.padEnd(10)} ${left.padEnd(width)}  |  ${right}`);
    }
    const ok = direct.status === 400 && filtered.status === 200;
    console.log(ok ? '\nThe filter removed `model` from the body; Azure accepted the request.' : '\nUnexpected result: see the statuses above.');
    process.exitCode = ok ? 0 : 1;
  } finally {
    await dataPath.close();
    envoy.close();
    await server.shutdown(1000);
    await azure.close();
  }
}

main().catch((error: unknown) => {
  console.error(error);
  process.exit(1);
});
