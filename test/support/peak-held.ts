// Samples the server's held body bytes after every message it handles (vitest only: it spies on the
// processor, so it lives apart from the harness the benchmarks import too).
import { vi } from 'vitest';
import { CallProcessor } from '../../src/call/index.js';
import type { TestServer } from './harness.js';

/** The largest heldBytes() after any message the server handled while `run` was in flight. */
export async function peakHeld<T>(server: TestServer, run: () => Promise<T>): Promise<{ value: T; peak: number }> {
  let peak = 0;
  const handle = CallProcessor.prototype.handle;
  const spy = vi.spyOn(CallProcessor.prototype, 'handle').mockImplementation(function (this: CallProcessor, message) {
    const answered = handle.call(this, message);
    peak = Math.max(peak, server.server.heldBytes());
    return answered;
  });
  try {
    return { value: await run(), peak };
  } finally {
    spy.mockRestore();
  }
}
