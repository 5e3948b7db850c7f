// The Azure stand-in (tools/azure-standin.ts) over real HTTP: Azure OpenAI's answers, byte for byte for the
// error bodies, and the bug itself reproduced with the real
// `openai` SDK's AzureOpenAI client.
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { inflateSync } from 'node:zlib';
import { AzureOpenAI } from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { listMultipartParts } from '../src/body/index.js';
import { multipartBoundary, startAzureStandin, TINY_PNG_BASE64, type Standin } from '../tools/azure-standin.js';

const API = '?api-version=2025-04-01-preview';
const DEP = '/openai/deployments/gpt-image-2-1';
const KEY = { 'api-key': 'test-key' };
const SEED = { prompt: 'a red circle', n: 1, size: '1024x1024' };

const MODEL_DOES_NOT_EXIST =
  '{"error":{"message":"The model \'gpt-image-2-1\' does not exist.","type":"image_generation_user_error","param":"model","code":"invalid_value"}}';
const RESOURCE_NOT_FOUND = '{"error":{"code":"404","message":"Resource not found"}}';
const ACCESS_DENIED =
  '{"error":{"code":"401","message":"Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a valid key for an active subscription and use a correct regional API endpoint for your resource."}}';
const DEPLOYMENT_NOT_FOUND =
  '{"error":{"code":"DeploymentNotFound","message":"The API deployment for this resource does not exist. If you created the deployment within the last 5 minutes, please wait a moment and try again."}}';

let standin: Standin;
beforeAll(async () => {
  standin = await startAzureStandin({ deployments: ['gpt-image-2-1', 'my dep'] });
});
afterAll(async () => {
  await standin.close();
});

async function post(p: string, body: string | Buffer, headers: Record<string, string> = {}) {
  const res = await fetch(`${standin.url}${p}`, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body });
  return { status: res.status, text: await res.text(), type: res.headers.get('content-type') };
}
const postJson = (p: string, body: unknown, headers: Record<string, string> = KEY) => post(p, JSON.stringify(body), headers);

function multipart(fields: Array<[string, string] | [string, Buffer, string]>, boundary = 'XyZ-boundary'): { body: Buffer; type: string } {
  const chunks: Buffer[] = [];
  for (const [name, value, filename] of fields) {
    const disposition = filename ? `form-data; name="${name}"; filename="${filename}"` : `form-data; name="${name}"`;
    const type = filename ? 'Content-Type: image/png\r\n' : '';
    chunks.push(Buffer.from(`--${boundary}\r\nContent-Disposition: ${disposition}\r\n${type}\r\n`), Buffer.from(value), Buffer.from('\r\n'));
  }
  chunks.push(Buffer.from(`--${boundary}--\r\n`));
  return { body: Buffer.concat(chunks), type: `multipart/form-data; boundary=${boundary}` };
}
const PNG = Buffer.from(TINY_PNG_BASE64, 'base64');

describe('deployment routes', () => {
  it('answers 200 with a b64 PNG when the body has no model (the reporter\'s direct curl in LiteLLM #26316)', async () => {
    const res = await postJson(`${DEP}/images/generations${API}`, SEED);
    expect(res.status).toBe(200);
    const json = JSON.parse(res.text) as { created: number; data: Array<{ b64_json: string }>; usage: Record<string, unknown> };
    expect(Math.abs(json.created - Date.now() / 1000)).toBeLessThan(60);
    expect(json.data).toEqual([{ b64_json: TINY_PNG_BASE64 }]);
    expect(json.usage).toMatchObject({ total_tokens: expect.any(Number) });
  });

  it('answers exactly Azure\'s 400 when the body carries model, whatever its value', async () => {
    for (const model of ['gpt-image-2-1', 'gpt-image-2', null, '']) {
      const res = await postJson(`${DEP}/images/generations${API}`, { model, ...SEED });
      expect(res.status).toBe(400);
      expect(res.text).toBe(MODEL_DOES_NOT_EXIST);
    }
  });

  it('accepts any prefix before /openai, a trailing slash, and Bearer auth', async () => {
    for (const p of [`/api/projects/p1${DEP}/images/generations/${API}`, `/apim/x${DEP}/images/generations${API}`]) {
      expect((await postJson(p, SEED, { authorization: 'Bearer t0ken' })).status).toBe(200);
    }
  });

  it('needs api-version: 404 Resource not found without it', async () => {
    const res = await postJson(`${DEP}/images/generations`, SEED);
    expect(res).toMatchObject({ status: 404, text: RESOURCE_NOT_FOUND });
  });

  it('needs a key: 401 with Azure\'s text without api-key or bearer', async () => {
    for (const headers of [{}, { 'api-key': '' }, { authorization: 'Basic abc' }] as Array<Record<string, string>>) {
      expect(await postJson(`${DEP}/images/generations${API}`, SEED, headers)).toMatchObject({ status: 401, text: ACCESS_DENIED });
    }
  });

  it('404 DeploymentNotFound for an unknown deployment; percent-encoded names are decoded', async () => {
    expect(await postJson(`/openai/deployments/nope/images/generations${API}`, SEED)).toMatchObject({ status: 404, text: DEPLOYMENT_NOT_FOUND });
    expect((await postJson(`/openai/deployments/my%20dep/images/generations${API}`, SEED)).status).toBe(200);
  });

  it('400 invalid_request_error for malformed JSON, a non-object body or a non-JSON content type', async () => {
    const malformed = await post(`${DEP}/images/generations${API}`, '{"prompt": "x",', KEY);
    expect(malformed.status).toBe(400);
    expect(JSON.parse(malformed.text)).toMatchObject({ error: { type: 'invalid_request_error' } });
    expect((await post(`${DEP}/images/generations${API}`, '[1]', KEY)).status).toBe(400);
    const form = multipart([['prompt', 'x']]);
    const wrongType = await post(`${DEP}/images/generations${API}`, form.body, { ...KEY, 'content-type': form.type });
    expect(wrongType.status).toBe(400);
    expect(JSON.parse(wrongType.text).error.message).toMatch(/^Unsupported content type: 'multipart\/form-data/);
  });

  it('400 unknown_parameter for response_format and extra_body', async () => {
    const res = await postJson(`${DEP}/images/generations${API}`, { ...SEED, response_format: 'b64_json' });
    expect(res.status).toBe(400);
    expect(JSON.parse(res.text)).toEqual({
      error: { message: "Unknown parameter: 'response_format'.", type: 'invalid_request_error', param: 'response_format', code: 'unknown_parameter' },
    });
    expect(JSON.parse((await postJson(`${DEP}/images/generations${API}`, { ...SEED, extra_body: {} })).text).error.param).toBe('extra_body');
  });

  it('returns n images, and server-sent events for stream: true', async () => {
    expect(JSON.parse((await postJson(`${DEP}/images/generations${API}`, { ...SEED, n: 3 })).text).data).toHaveLength(3);
    const streamed = await postJson(`${DEP}/images/generations${API}`, { ...SEED, stream: true });
    expect(streamed.type).toBe('text/event-stream');
    expect(streamed.text).toMatch(/^event: image_generation\.completed\ndata: \{"type":"image_generation\.completed","b64_json":"/);
  });

  describe('edits (multipart)', () => {
    const edits = `${DEP}/images/edits${API}`;
    const send = (form: { body: Buffer; type: string }) => post(edits, form.body, { ...KEY, 'content-type': form.type });

    it('200 for image + prompt, also with image[] and a quoted boundary', async () => {
      expect((await send(multipart([['image', PNG, 'a.png'], ['prompt', 'add a hat']]))).status).toBe(200);
      const quoted = multipart([['image[]', PNG, 'a.png'], ['image[]', PNG, 'b.png'], ['prompt', 'x']], 'qb');
      const res = await post(edits, quoted.body, { ...KEY, 'content-type': 'multipart/form-data; boundary="qb"' });
      expect(res.status).toBe(200);
    });

    it('Azure\'s 400 when a model part is present (edits too)', async () => {
      const res = await send(multipart([['image', PNG, 'a.png'], ['prompt', 'x'], ['model', 'gpt-image-2-1']]));
      expect(res).toMatchObject({ status: 400, text: MODEL_DOES_NOT_EXIST });
    });

    it('400 without an image part, for a broken body, or for JSON', async () => {
      expect(JSON.parse((await send(multipart([['prompt', 'x']]))).text).error.param).toBe('image');
      const broken = multipart([['image', PNG, 'a.png'], ['prompt', 'x']]);
      expect((await send({ body: broken.body.subarray(0, broken.body.length - 20), type: broken.type })).status).toBe(400);
      expect((await postJson(edits, SEED)).status).toBe(400);
    });

    it('keeps binary image bytes intact (parsed as bytes, not text)', () => {
      const bytes = Buffer.from([0x00, 0xff, 0x0d, 0x0a, 0x2d, 0x2d, 0x80]);
      const form = multipart([['image', bytes, 'x.png'], ['prompt', 'é']]);
      const parts = listMultipartParts(form.body, multipartBoundary(form.type)!)!;
      expect(parts.map((p) => [p.name, p.filename, p.content])).toEqual([
        ['image', 'x.png', bytes],
        ['prompt', undefined, Buffer.from('é')],
      ]);
    });
  });
});

describe('v1 routes', () => {
  const v1 = '/openai/v1/images/generations';

  it('model is required and names the deployment; api-version optional', async () => {
    expect((await postJson(`${v1}?api-version=preview`, { model: 'gpt-image-2-1', ...SEED })).status).toBe(200);
    expect((await postJson(v1, { model: 'gpt-image-2-1', ...SEED }, { authorization: 'Bearer k' })).status).toBe(200);
    const missing = await postJson(v1, SEED);
    expect(missing.status).toBe(400);
    expect(JSON.parse(missing.text).error).toMatchObject({ param: 'model', type: 'invalid_request_error' });
    expect(await postJson(v1, { model: 'gpt-image-2', ...SEED })).toMatchObject({ status: 404, text: DEPLOYMENT_NOT_FOUND });
  });

  it('v1 edits take model as a form field', async () => {
    const form = multipart([['model', 'gpt-image-2-1'], ['image', PNG, 'a.png'], ['prompt', 'x']]);
    expect((await post('/openai/v1/images/edits', form.body, { ...KEY, 'content-type': form.type })).status).toBe(200);
  });
});

describe('everything else is 404', () => {
  it.each([
    ['POST', `/openai/images/generations${API}`],
    ['POST', `${DEP}/images/variations${API}`],
    ['POST', `${DEP}/chat/completions${API}`],
    ['GET', `${DEP}/images/generations${API}`],
    ['GET', '/'],
  ])('%s %s', async (method, p) => {
    const res = await fetch(`${standin.url}${p}`, { method, headers: KEY, ...(method === 'POST' ? { body: '{}' } : {}) });
    expect(res.status).toBe(404);
    expect(await res.text()).toBe(RESOURCE_NOT_FOUND);
  });
});

describe('stand-in mechanics', () => {
  it('records what it received', async () => {
    const before = standin.requests.length;
    await postJson(`${DEP}/images/generations${API}`, SEED);
    const last = standin.requests.at(-1)!;
    expect(standin.requests.length).toBe(before + 1);
    expect(last).toMatchObject({ method: 'POST', path: `${DEP}/images/generations${API}` });
    expect(JSON.parse(last.body.toString())).toEqual(SEED);
  });

  it('only accepts the configured key when one is set', async () => {
    const strict = await startAzureStandin({ apiKey: 'right', deployments: ['d'] });
    try {
      const call = (key: string) => fetch(`${strict.url}/openai/deployments/d/images/generations${API}`, { method: 'POST', headers: { 'api-key': key, 'content-type': 'application/json' }, body: JSON.stringify(SEED) });
      expect((await call('wrong')).status).toBe(401);
      expect((await call('right')).status).toBe(200);
    } finally {
      await strict.close();
    }
  });

  it('serves a valid PNG (signature, chunk CRCs, 1x1 RGB pixel)', async () => {
    const { crc32 } = await import('node:zlib');
    expect(PNG.subarray(0, 8)).toEqual(Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]));
    let pos = 8;
    const chunks: Record<string, Buffer> = {};
    while (pos < PNG.length) {
      const len = PNG.readUInt32BE(pos);
      const type = PNG.subarray(pos + 4, pos + 8);
      const data = PNG.subarray(pos + 8, pos + 8 + len);
      if (typeof crc32 === 'function') expect(PNG.readUInt32BE(pos + 8 + len)).toBe(crc32(Buffer.concat([type, data])));
      chunks[type.toString('latin1')] = data;
      pos += 12 + len;
    }
    expect(Object.keys(chunks)).toEqual(['IHDR', 'IDAT', 'IEND']);
    expect([chunks.IHDR!.readUInt32BE(0), chunks.IHDR!.readUInt32BE(4)]).toEqual([1, 1]);
    expect(inflateSync(chunks.IDAT!)).toEqual(Buffer.from([0, 255, 0, 0]));
  });

  it('the real AzureOpenAI SDK hits the bug against it: it leaves model in the body', async () => {
    const client = new AzureOpenAI({ endpoint: standin.url, apiKey: 'k', apiVersion: '2025-04-01-preview', deployment: 'gpt-image-2-1', maxRetries: 0 });
    await expect(client.images.generate({ model: 'gpt-image-2-1', prompt: 'a red circle', n: 1, size: '1024x1024' })).rejects.toMatchObject({
      status: 400,
      message: expect.stringContaining("The model 'gpt-image-2-1' does not exist."),
    });
    const sent = JSON.parse(standin.requests.at(-1)!.body.toString()) as Record<string, unknown>;
    expect(sent.model).toBe('gpt-image-2-1');
  });

  it('runs as a program: PORT, AZURE_DEPLOYMENTS, a ready line, SIGTERM exits 0', async () => {
    const child = spawn(process.execPath, ['--import', 'tsx', path.resolve(import.meta.dirname, '../tools/azure-standin.ts')], {
      env: { ...process.env, PORT: '0', HOST: '127.0.0.1', AZURE_DEPLOYMENTS: 'a, b' },
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    try {
      const lines = createInterface({ input: child.stdout! })[Symbol.asyncIterator]();
      const nextLine = async () => String((await lines.next()).value);
      const ready = JSON.parse(await nextLine()) as { msg: string; port: number; deployments: string[] };
      expect(ready).toMatchObject({ msg: 'azure stand-in ready', deployments: ['a', 'b'] });
      const res = await fetch(`http://127.0.0.1:${ready.port}/openai/deployments/b/images/generations${API}`, {
        method: 'POST',
        headers: { ...KEY, 'content-type': 'application/json' },
        body: JSON.stringify({ ...SEED, model: 'b' }),
      });
      expect(res.status).toBe(400);
      const logLine = await nextLine();
      expect(JSON.parse(logLine).msg).toBe('POST /openai/deployments/b/images/generations -> 400');
      expect(logLine).not.toContain('test-key');
      expect(logLine).not.toContain('red circle');
      child.kill('SIGTERM');
      const [code] = (await once(child, 'exit')) as [number];
      expect(code).toBe(0);
    } finally {
      child.kill('SIGKILL');
    }
  });
});
