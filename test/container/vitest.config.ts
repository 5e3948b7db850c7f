// `npm run test:container`: the image built and run in Docker (test/container/image.container.ts). Not part
// of `npm test`: it needs root and a Docker engine, and takes minutes.
import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    root: fileURLToPath(new URL('../..', import.meta.url)),
    include: ['test/container/**/*.container.ts'],
    // Each step bounds itself; these bound the steps.
    testTimeout: 120_000,
    hookTimeout: 360_000,
    teardownTimeout: 180_000,
    fileParallelism: false,
    reporters: ['verbose'],
  },
});
