// The version users see in --version, the ready line and the extproc_build_info metric: package.json's,
// read at start-up (the image ships package.json beside dist/, as npm start runs it from the checkout).
import { readFileSync } from 'node:fs';

function readVersion(): string {
  try {
    const { version } = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version?: unknown };
    return typeof version === 'string' ? version : 'unknown';
  } catch {
    return 'unknown';
  }
}

export const VERSION = readVersion();
